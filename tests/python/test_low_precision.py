"""float16 and bfloat16 inputs: outputs in the inputs' dtype, float32 on request, the same values
as the library's float32 result rounded, gradients rounded likewise, mixed dtypes in float32.
bfloat16 arrays come from ml_dtypes (installed by scripts/test-python); torch tensors are tested
only where torch is installed."""

from __future__ import annotations

import numpy as np
import pytest

import reference
import sdpa
from conftest import Case, reference_options

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = [np.dtype(np.float16), BF16]


def inputs(dtype, case=None, seed=0):
    q, k, v, kwargs = (case or Case("low", lq=70, lk=90, dk=40, dv=24)).inputs(seed)
    return q.astype(dtype), k.astype(dtype), v.astype(dtype), kwargs


@pytest.mark.parametrize("dtype", DTYPES, ids=["float16", "bfloat16"])
def test_output_is_in_the_input_dtype_and_is_the_float32_result_rounded(dtype):
    q, k, v, _ = inputs(dtype)
    out = sdpa.scaled_dot_product_attention(q, k, v, is_causal=True)
    assert out.dtype == dtype
    wide = np.empty(out.shape, dtype=np.float32)  # float32 on request: same kernel, no rounding
    sdpa.scaled_dot_product_attention(q, k, v, is_causal=True, out=wide)
    np.testing.assert_array_equal(out.view(np.uint16), wide.astype(dtype).view(np.uint16))
    assert np.abs(wide).max() > 0.1


@pytest.mark.parametrize("dtype", DTYPES, ids=["float16", "bfloat16"])
def test_every_option_is_close_to_the_float64_reference_on_the_same_values(case, dtype):
    q, k, v, kwargs = case.inputs()
    q, k, v = (a.astype(dtype) for a in (q, k, v))
    wide = np.empty(sdpa.scaled_dot_product_attention(q, k, v, **kwargs).shape, np.float32)
    _, lse = sdpa.scaled_dot_product_attention(q, k, v, return_lse=True, out=wide, **kwargs)
    options = reference_options(kwargs)
    ref = reference.forward(*(a.astype(np.float64) for a in (q, k, v)), options)
    finite = np.isfinite(ref[0])
    # fp32 accumulation on 16-bit values: the only rounding beyond fp32 is bfloat16's P (2^-9
    # relative per probability) on AVX512_BF16; |v| < 5, so 2e-2 bounds it with a wide margin,
    # while a wrong conversion errs by O(1).
    np.testing.assert_allclose(wide[finite], ref[0][finite], atol=2e-2)
    np.testing.assert_allclose(lse[np.isfinite(lse)], ref[1][np.isfinite(ref[1])], atol=1e-3)


def test_float16_is_exactly_the_float32_computation_on_the_same_values():
    q, k, v, _ = inputs(np.float16)
    wide = np.empty((2, 4, 70, 24), dtype=np.float32)
    sdpa.scaled_dot_product_attention(q, k, v, out=wide)
    expected = sdpa.scaled_dot_product_attention(*(a.astype(np.float32) for a in (q, k, v)))
    np.testing.assert_array_equal(wide, expected)


def test_mixed_dtypes_run_in_float32():
    q, k, v, _ = inputs(BF16)
    out = sdpa.scaled_dot_product_attention(q, k.astype(np.float32), v.astype(np.float16))
    assert out.dtype == np.float32
    expected = sdpa.scaled_dot_product_attention(*(a.astype(np.float32) for a in (q, k, v)))
    np.testing.assert_array_equal(out, expected)


def test_out_of_another_16bit_dtype_is_a_type_error():
    q, k, v, _ = inputs(BF16)
    with pytest.raises(TypeError, match="out.dtype: expected float32 or bfloat16, got float16"):
        sdpa.scaled_dot_product_attention(q, k, v, out=np.empty((2, 4, 70, 24), np.float16))


def test_strided_bfloat16_views_are_read_in_place():
    q, k, v, _ = inputs(BF16)
    blhd = np.ascontiguousarray(q.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)  # [B, L, H, D]
    np.testing.assert_array_equal(
        sdpa.scaled_dot_product_attention(blhd, k, v).view(np.uint16),
        sdpa.scaled_dot_product_attention(q, k, v).view(np.uint16))


@pytest.mark.parametrize("dtype", DTYPES, ids=["float16", "bfloat16"])
def test_gradients_are_in_the_input_dtype_and_are_the_float32_gradients_rounded(dtype):
    q, k, v, _ = inputs(dtype)
    dout = np.random.default_rng(3).standard_normal((2, 4, 70, 24)).astype(dtype)
    grads = sdpa.attention_backward(dout, q, k, v, is_causal=True)
    wide = sdpa.attention_backward(*(a.astype(np.float32) for a in (dout, q, k, v)),
                                   is_causal=True)
    for name, g, w, like in zip(("dq", "dk", "dv"), grads, wide, (q, k, v)):
        assert g.dtype == dtype and g.shape == like.shape, name
        np.testing.assert_array_equal(g.view(np.uint16), w.astype(dtype).view(np.uint16), name)


def test_torch_bfloat16_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    q, k, v, _ = inputs(BF16)
    tensors = [torch.from_numpy(a.view(np.int16)).view(torch.bfloat16) for a in (q, k, v)]
    out = sdpa.scaled_dot_product_attention(*tensors)
    assert out.dtype == BF16
    np.testing.assert_array_equal(out.view(np.uint16),
                                  sdpa.scaled_dot_product_attention(q, k, v).view(np.uint16))
