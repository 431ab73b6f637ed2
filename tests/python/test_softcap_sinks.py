"""softcap= and sinks= of scaled_dot_product_attention and attention_backward against the NumPy
float64 reference (reference.py), with the accuracy rule; argument errors."""

from __future__ import annotations

import numpy as np
import pytest

import reference
import sdpa
from conftest import assert_accurate

SINKS = np.array([0.5, 8.0, -np.inf, -2.0], dtype=np.float32)  # ordinary, dominating, none


def inputs(seed: int, b=2, hq=4, hkv=2, lq=21, lk=30, d=16):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, hq, lq, d), dtype=np.float32)
    k = rng.standard_normal((b, hkv, lk, d), dtype=np.float32)
    v = rng.standard_normal((b, hkv, lk, d), dtype=np.float32)
    dout = rng.standard_normal((b, hq, lq, d), dtype=np.float32)
    return q, k, v, dout


CASES = {
    "softcap": dict(softcap=1.5, scale=1.0),
    "sinks": dict(sinks=SINKS),
    "both_causal_bottom_right": dict(softcap=5.0, scale=2.0, sinks=SINKS, is_causal=True,
                                     causal_alignment="bottom_right"),
    "sinks_with_padding_and_bias": dict(sinks=SINKS, query_lengths=np.array([21, 9]),
                                        attn_mask="bias"),
}


def options_of(kwargs, q, lq, lk) -> reference.Options:
    causal = kwargs.get("causal_alignment", "top_left") if kwargs.get("is_causal") else "none"
    return reference.Options(bias=kwargs.get("attn_mask"), scale=kwargs.get("scale"), causal=causal,
                             query_lengths=kwargs.get("query_lengths"),
                             softcap=kwargs.get("softcap", 0.0), sinks=kwargs.get("sinks"))


def resolved(name, q, lq=21, lk=30):
    kwargs = dict(CASES[name], enable_gqa=True)
    if kwargs.get("attn_mask") == "bias":
        kwargs["attn_mask"] = np.random.default_rng(5).standard_normal((1, 4, lq, lk)).astype(np.float32)
    return kwargs


@pytest.mark.parametrize("name", sorted(CASES))
def test_forward_matches_the_reference(name):
    q, k, v, _ = inputs(1, lq=21 if "causal" not in name else 40)
    kwargs = resolved(name, q, q.shape[2], k.shape[2])
    out, lse, weights = sdpa.scaled_dot_product_attention(q, k, v, return_lse=True,
                                                          return_weights=True, **kwargs)
    options = options_of(kwargs, q, q.shape[2], k.shape[2])
    ref = reference.forward(q, k, v, options)
    naive = reference.forward(q, k, v, options, dtype=np.float32)
    slack = 1e-6 * max(1.0, np.abs(ref[1][np.isfinite(ref[1])]).max())
    for what, fast, r64, r32 in zip(("out", "lse", "weights"), (out, lse, weights), ref, naive):
        assert_accurate(fast, r64, r32, f"{name}: {what}", slack=slack)


def test_row_without_keys_gives_zero_output_and_the_sink_as_lse():
    q, k, v, _ = inputs(2, lq=12, lk=5)  # bottom-right: rows 0..6 see no key
    out, lse = sdpa.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True,
                                                 causal_alignment="bottom_right", sinks=SINKS,
                                                 return_lse=True)
    assert (out[:, :, :7] == 0).all()
    np.testing.assert_array_equal(lse[:, :, :7], np.broadcast_to(SINKS[None, :, None], (2, 4, 7)))


@pytest.mark.parametrize("name", sorted(CASES))
def test_backward_matches_the_reference(name):
    q, k, v, dout = inputs(3)
    kwargs = resolved(name, q)
    grads = sdpa.attention_backward(dout, q, k, v, threads=1, return_dscale=True, **kwargs)
    options = options_of(kwargs, q, q.shape[2], k.shape[2])
    ref = reference.backward(q, k, v, dout, options)
    naive = reference.backward(q, k, v, dout, options, dtype=np.float32)
    names = ["dq", "dk", "dv", "dscale"]
    ref_values, naive_values = list(ref[:3]) + [ref[4]], list(naive[:3]) + [naive[4]]
    if "sinks" in kwargs:
        names.append("dsinks")
        ref_values.append(reference.sink_gradient(q, k, v, dout, options))
        naive_values.append(reference.sink_gradient(q, k, v, dout, options, dtype=np.float32))
    assert len(grads) == len(names)
    for what, fast, r64, r32 in zip(names, grads, ref_values, naive_values):
        slack = 2e-6 * max(1.0, float(np.abs(r64).max()))
        if what == "dscale":
            slack = 2.0**-24 * reference.dscale_condition(q, k, v, dout, options) + 1e-5
        assert_accurate(fast, r64, r32, f"{name}: {what}", slack=slack)
    if "sinks" in kwargs:
        assert grads[-1].shape == (4,) and grads[-1].dtype == np.float32
        assert grads[-1][2] == 0  # -inf: no sink, no gradient


def test_softcap_must_be_finite_and_not_negative():
    q, k, v, _ = inputs(4)
    for bad in (-1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="softcap"):
            sdpa.scaled_dot_product_attention(q, k, v, enable_gqa=True, softcap=bad)
    with pytest.raises(TypeError, match="softcap"):
        sdpa.scaled_dot_product_attention(q, k, v, enable_gqa=True, softcap="30")


def test_sinks_of_wrong_shape_dtype_or_value_are_rejected():
    q, k, v, dout = inputs(5)
    with pytest.raises(ValueError, match=r"options.sinks.shape\[0\] = 3 does not match q.shape\[1\] \(Hq\) = 4"):
        sdpa.scaled_dot_product_attention(q, k, v, enable_gqa=True, sinks=np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="options.sinks.rank"):
        sdpa.attention_backward(dout, q, k, v, enable_gqa=True, sinks=np.zeros((1, 4), np.float32))
    with pytest.raises(TypeError, match="sinks.dtype"):
        sdpa.scaled_dot_product_attention(q, k, v, enable_gqa=True, sinks=np.zeros(4, np.int32))
    with pytest.raises(ValueError, match=r"options.sinks\[1\] = nan"):
        sdpa.scaled_dot_product_attention(q, k, v, enable_gqa=True,
                                          sinks=np.array([0, np.nan, 0, 0], np.float32))


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16"])
def test_16bit_inputs_with_softcap_and_sinks(dtype_name):
    """float16 / bfloat16 inputs: forward close to the float64 reference on the same values (float16
    exactly the float32 computation on them), gradients (dsinks included) those of float32 inputs
    holding the same values."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtype = np.dtype(np.float16) if dtype_name == "float16" else np.dtype(ml_dtypes.bfloat16)
    q, k, v, dout = inputs(4, lq=40)
    q, k, v, dout = (a.astype(dtype) for a in (q, k, v, dout))
    wide = [a.astype(np.float32) for a in (q, k, v, dout)]
    kwargs = resolved("both_causal_bottom_right", q, 40)
    out = np.empty((2, 4, 40, 16), dtype=np.float32)
    _, lse = sdpa.scaled_dot_product_attention(q, k, v, out=out, return_lse=True, **kwargs)
    ref = reference.forward(*(a.astype(np.float64) for a in wide[:3]), options_of(kwargs, q, 40, 30))
    # As test_low_precision: bfloat16's P rounding (2^-9 relative) is the only error beyond fp32.
    np.testing.assert_allclose(out, ref[0], atol=2e-2)
    np.testing.assert_allclose(lse, ref[1], atol=1e-3)
    out32, lse32 = sdpa.scaled_dot_product_attention(*wide[:3], return_lse=True, **kwargs)
    if dtype_name == "float16":
        np.testing.assert_array_equal(out, out32)
        np.testing.assert_array_equal(lse, lse32)
    grads = sdpa.attention_backward(dout, q, k, v, threads=1, **kwargs)
    grads32 = sdpa.attention_backward(wide[3], *wide[:3], threads=1, **kwargs)
    assert len(grads) == 4 and grads[3].dtype == np.float32
    for g, g32 in zip(grads[:3], grads32[:3]):
        assert g.dtype == dtype
        np.testing.assert_array_equal(g.view(np.uint16), g32.astype(dtype).view(np.uint16))
    np.testing.assert_array_equal(grads[3], grads32[3])
    assert grads[3][0] != 0 and grads[3][2] == 0
