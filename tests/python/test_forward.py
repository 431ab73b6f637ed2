"""scaled_dot_product_attention against the NumPy float64 reference, for every option."""

from __future__ import annotations

import numpy as np
import pytest

import reference
import sdpa
from conftest import Case, assert_accurate, reference_options


def test_every_option_matches_the_float64_reference(case: Case):
    q, k, v, kwargs = case.inputs()
    out, lse, weights = sdpa.scaled_dot_product_attention(
        q, k, v, return_lse=True, return_weights=True, threads=1, **kwargs)
    options = reference_options(kwargs)
    ref = reference.forward(q, k, v, options)
    naive = reference.forward(q, k, v, options, dtype=np.float32)
    for name, fast, r64, r32 in zip(("out", "lse", "weights"), (out, lse, weights), ref, naive):
        assert fast.dtype == np.float32
        assert_accurate(fast, r64, r32, f"{case.name}: {name}")


def test_output_alone_equals_output_with_extras(case: Case):
    q, k, v, kwargs = case.inputs()
    plain = sdpa.scaled_dot_product_attention(q, k, v, **kwargs)
    out, _ = sdpa.scaled_dot_product_attention(q, k, v, return_lse=True, **kwargs)
    assert isinstance(plain, np.ndarray)
    np.testing.assert_array_equal(plain, out)


def test_results_are_bitwise_identical_for_any_thread_count():
    q, k, v, kwargs = Case("causal", lq=150, lk=150, kwargs={"is_causal": True}).inputs()
    one = sdpa.scaled_dot_product_attention(q, k, v, threads=1, **kwargs)
    for threads in (2, 3, None):
        np.testing.assert_array_equal(
            sdpa.scaled_dot_product_attention(q, k, v, threads=threads, **kwargs), one)


def test_row_that_sees_no_key_gives_zero_and_minus_infinity_not_nan():
    q, k, v, _ = Case("masked").inputs()
    mask = np.ones((37, 53), dtype=bool)
    mask[4] = False
    out, lse = sdpa.scaled_dot_product_attention(q, k, v, mask, return_lse=True)
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(out[:, :, 4], 0)
    assert np.all(lse[:, :, 4] == -np.inf)


def test_bool_mask_true_attends_and_float_mask_is_added():
    q, k, v, _ = Case("masks").inputs()
    allowed = np.random.default_rng(1).random((37, 53)) < 0.5
    allowed[:, 0] = True
    as_bool = sdpa.scaled_dot_product_attention(q, k, v, allowed)
    as_float = sdpa.scaled_dot_product_attention(
        q, k, v, np.where(allowed, 0.0, -np.inf).astype(np.float32))
    np.testing.assert_allclose(as_bool, as_float, atol=1e-6)


@pytest.mark.parametrize("shape_q, shape_k, shape_v", [
    ((37, 16), (53, 16), (53, 8)),                          # (L, E): no batch, no heads
    ((3, 37, 16), (3, 53, 16), (3, 53, 8)),                  # (H, L, E), like torch
    ((2, 3, 5, 16), (2, 3, 7, 16), (2, 3, 7, 8)),            # (B, H, L, E)
    ((2, 2, 3, 5, 16), (2, 2, 3, 7, 16), (2, 2, 3, 7, 8)),   # more leading dimensions
    ((2, 1, 3, 5, 16), (1, 2, 3, 7, 16), (1, 2, 3, 7, 8)),   # leading dimensions that broadcast
    ((1, 5, 16), (3, 7, 16), (3, 7, 8)),                     # one query head against three
    ((5, 16), (3, 7, 16), (3, 7, 8)),                        # rank 2 query, rank 3 key/value
])
def test_ranks_and_leading_dimensions_broadcast_like_torch(shape_q, shape_k, shape_v):
    rng = np.random.default_rng(2)
    q = rng.standard_normal(shape_q, dtype=np.float32)
    k = rng.standard_normal(shape_k, dtype=np.float32)
    v = rng.standard_normal(shape_v, dtype=np.float32)
    out, lse = sdpa.scaled_dot_product_attention(q, k, v, return_lse=True)
    # Reference: broadcast by NumPy's matmul rules, as torch's math path does.
    s = q.astype(np.float64) @ np.swapaxes(k, -1, -2) / np.sqrt(q.shape[-1])
    p = np.exp(s - s.max(-1, keepdims=True))
    expected_lse = np.log(p.sum(-1)) + s.max(-1)
    expected = (p / p.sum(-1, keepdims=True)) @ v
    assert out.shape == expected.shape and lse.shape == expected_lse.shape
    np.testing.assert_allclose(out, expected, atol=2e-6)
    np.testing.assert_allclose(lse, expected_lse, atol=2e-6)


def test_mask_with_more_leading_dimensions_broadcasts():
    rng = np.random.default_rng(3)
    q = rng.standard_normal((2, 3, 2, 5, 8), dtype=np.float32)
    k = rng.standard_normal((2, 3, 2, 6, 8), dtype=np.float32)
    v = rng.standard_normal((2, 3, 2, 6, 4), dtype=np.float32)
    bias = rng.standard_normal((3, 1, 5, 6)).astype(np.float32)
    out = sdpa.scaled_dot_product_attention(q, k, v, bias)
    s = q.astype(np.float64) @ np.swapaxes(k, -1, -2) / np.sqrt(8) + bias
    p = np.exp(s - s.max(-1, keepdims=True))
    np.testing.assert_allclose(out, (p / p.sum(-1, keepdims=True)) @ v, atol=2e-6)


def test_float64_inputs_are_converted_to_float32():
    q, k, v, _ = Case("dtypes").inputs()
    dtype = np.float64
    expected = sdpa.scaled_dot_product_attention(
        q.astype(dtype).astype(np.float32), k.astype(dtype).astype(np.float32),
        v.astype(dtype).astype(np.float32))
    out = sdpa.scaled_dot_product_attention(q.astype(dtype), k.astype(dtype), v.astype(dtype))
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, expected)
    # (float16 and bfloat16 run in their own dtype: test_low_precision.py)


def test_float64_bias_is_converted():
    q, k, v, kwargs = Case("bias", mask="bias").inputs()
    bias = kwargs["attn_mask"]
    np.testing.assert_array_equal(
        sdpa.scaled_dot_product_attention(q, k, v, bias.astype(np.float64)),
        sdpa.scaled_dot_product_attention(q, k, v, bias))


def test_out_is_written_in_place_and_returned():
    q, k, v, _ = Case("out").inputs()
    expected = sdpa.scaled_dot_product_attention(q, k, v)
    out = np.full((2, 4, 37, 24), np.nan, dtype=np.float32)
    assert sdpa.scaled_dot_product_attention(q, k, v, out=out) is out
    np.testing.assert_array_equal(out, expected)
    # A strided destination: the [B, L, H, D] memory layout, viewed as [B, H, L, D].
    blhd = np.full((2, 37, 4, 24), np.nan, dtype=np.float32)
    result, lse = sdpa.scaled_dot_product_attention(
        q, k, v, out=blhd.transpose(0, 2, 1, 3), return_lse=True)
    np.testing.assert_array_equal(blhd.transpose(0, 2, 1, 3), expected)
    assert lse.shape == (2, 4, 37)


def test_out_with_leading_dimensions_that_do_not_merge_is_still_written():
    rng = np.random.default_rng(4)
    q = rng.standard_normal((2, 3, 2, 5, 8), dtype=np.float32)
    k = rng.standard_normal((2, 3, 2, 6, 8), dtype=np.float32)
    v = rng.standard_normal((2, 3, 2, 6, 4), dtype=np.float32)
    expected = sdpa.scaled_dot_product_attention(q, k, v)
    storage = np.zeros((3, 2, 2, 5, 4), dtype=np.float32)
    out = storage.transpose(1, 0, 2, 3, 4)  # leading (2, 3) cannot merge into one stride
    sdpa.scaled_dot_product_attention(q, k, v, out=out)
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("shapes", [
    ((2, 4, 0, 8), (2, 4, 6, 8), (2, 4, 6, 3)),   # Lq = 0
    ((0, 4, 5, 8), (0, 4, 6, 8), (0, 4, 6, 3)),   # B = 0
])
def test_zero_size_dimensions_give_empty_results(shapes):
    arrays = [np.ones(s, dtype=np.float32) for s in shapes]
    out, lse = sdpa.scaled_dot_product_attention(*arrays, return_lse=True)
    assert out.shape == shapes[0][:3] + (3,) and out.size == 0
    assert lse.shape == shapes[0][:3]


def test_zero_heads_or_zero_head_dim_is_an_error_that_names_it():
    # The library needs Hkv >= 1 (query heads are grouped over key heads) and Dk, Dv >= 1.
    with pytest.raises(ValueError, match=r"k.shape\[1\] \(Hkv\) = 0: expected >= 1"):
        sdpa.scaled_dot_product_attention(*(np.ones((2, 0, 5, 8), np.float32) for _ in range(3)))
    with pytest.raises(ValueError, match=r"\(Dk\) = 0"):
        sdpa.scaled_dot_product_attention(*(np.ones((2, 1, 5, 0), np.float32) for _ in range(3)))


def test_no_keys_gives_zero_output_and_minus_infinity():
    q = np.ones((1, 2, 3, 8), dtype=np.float32)
    k = np.ones((1, 2, 0, 8), dtype=np.float32)
    v = np.ones((1, 2, 0, 5), dtype=np.float32)
    out, lse = sdpa.scaled_dot_product_attention(q, k, v, return_lse=True)
    np.testing.assert_array_equal(out, np.zeros((1, 2, 3, 5)))
    assert np.all(lse == -np.inf)


def test_weights_rows_sum_to_one():
    q, k, v, kwargs = Case("weights", kwargs={"is_causal": True}).inputs()
    _, weights = sdpa.scaled_dot_product_attention(q, k, v, return_weights=True, **kwargs)
    np.testing.assert_allclose(weights.sum(-1), 1, atol=1e-5)
    assert np.all(np.triu(weights[0, 0], 1) == 0)
