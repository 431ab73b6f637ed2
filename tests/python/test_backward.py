"""attention_backward against the float64 reference's gradients, and the reference against finite
differences."""

from __future__ import annotations

import numpy as np
import pytest

import reference
import sdpa
from conftest import CASES, Case, assert_accurate, reference_options


def grads_of(case: Case, seed: int = 0):
    q, k, v, kwargs = case.inputs(seed)
    dout = np.random.default_rng(seed + 100).standard_normal(
        (case.b, case.hq, case.lq, case.dv), dtype=np.float32)
    return q, k, v, dout, kwargs


def test_every_option_matches_the_reference_gradients(case: Case):
    q, k, v, dout, kwargs = grads_of(case)
    is_bias = kwargs.get("attn_mask") is not None and kwargs["attn_mask"].dtype != np.bool_
    grads = sdpa.attention_backward(dout, q, k, v, threads=1, return_dbias=is_bias,
                                    return_dscale=True, **kwargs)
    options = reference_options(kwargs)
    ref = reference.backward(q, k, v, dout, options)
    naive = reference.backward(q, k, v, dout, options, dtype=np.float32)
    names = ["dq", "dk", "dv"] + (["dbias"] if is_bias else []) + ["dscale"]
    ref_values = list(ref[:3]) + ([ref[3]] if is_bias else []) + [ref[4]]
    naive_values = list(naive[:3]) + ([naive[3]] if is_bias else []) + [naive[4]]
    assert len(grads) == len(names)
    for name, fast, r64, r32 in zip(names, grads, ref_values, naive_values):
        if name != "dscale":
            assert fast.dtype == np.float32 and fast.shape == np.shape(r64), name
        if name == "dscale":  # one sum of cancelling terms: rounding relative to their size
            slack = 2.0**-24 * reference.dscale_condition(q, k, v, dout, options)
        else:  # fp32 rounding of the lse recomputation and of the tile order, relative to size
            slack = 2e-6 * max(1.0, np.abs(r64).max())
        assert_accurate(fast, r64, r32, f"{case.name}: {name}", slack=slack)


def test_given_output_and_lse_equal_recomputed_ones():
    case = Case("given", kwargs={"is_causal": True})
    q, k, v, dout, kwargs = grads_of(case)
    out, lse = sdpa.scaled_dot_product_attention(q, k, v, return_lse=True, **kwargs)
    given = sdpa.attention_backward(dout, q, k, v, output=out, lse=lse, **kwargs)
    recomputed = sdpa.attention_backward(dout, q, k, v, **kwargs)
    for a, b in zip(given, recomputed):
        np.testing.assert_array_equal(a, b)


def test_gradients_are_bitwise_identical_for_any_thread_count():
    case = Case("threads", hq=4, hkv=2, lq=150, lk=170, kwargs={"enable_gqa": True})
    q, k, v, dout, kwargs = grads_of(case)
    one = sdpa.attention_backward(dout, q, k, v, threads=1, **kwargs)
    for threads in (2, None):
        for a, b in zip(sdpa.attention_backward(dout, q, k, v, threads=threads, **kwargs), one):
            np.testing.assert_array_equal(a, b)


def test_broadcast_inputs_get_gradients_summed_to_their_shapes():
    rng = np.random.default_rng(5)
    q = rng.standard_normal((2, 1, 3, 5, 8), dtype=np.float32)
    k = rng.standard_normal((1, 2, 3, 6, 8), dtype=np.float32)
    v = rng.standard_normal((1, 2, 3, 6, 4), dtype=np.float32)
    bias = rng.standard_normal((3, 1, 6)).astype(np.float32)
    dout = rng.standard_normal((2, 2, 3, 5, 4), dtype=np.float32)
    dq, dk, dv, dbias = sdpa.attention_backward(dout, q, k, v, bias, return_dbias=True)
    assert (dq.shape, dk.shape, dv.shape, dbias.shape) == (q.shape, k.shape, v.shape, bias.shape)
    # The same call on explicitly broadcast copies, then summed, gives the same gradients.
    full = (2, 2, 3)
    qb, kb, vb = (np.ascontiguousarray(np.broadcast_to(a, full + a.shape[-2:])) for a in (q, k, v))
    ref = reference.backward(qb.reshape(4, 3, 5, 8), kb.reshape(4, 3, 6, 8), vb.reshape(4, 3, 6, 4),
                             dout.reshape(4, 3, 5, 4), reference.Options(bias=bias))
    np.testing.assert_allclose(dq, ref[0].reshape(full + (5, 8)).sum(1, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(dk, ref[1].reshape(full + (6, 8)).sum(0, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(dv, ref[2].reshape(full + (6, 4)).sum(0, keepdims=True), atol=1e-5)
    np.testing.assert_allclose(dbias, ref[3].reshape(3, 1, 6), atol=1e-5)


def test_float64_inputs_give_float32_gradients():
    q, k, v, dout, kwargs = grads_of(Case("f64"))
    grads64 = sdpa.attention_backward(*(a.astype(np.float64) for a in (dout, q, k, v)))
    grads32 = sdpa.attention_backward(dout, q, k, v)
    for a, b in zip(grads64, grads32):
        assert a.dtype == np.float32
        np.testing.assert_array_equal(a, b)


def test_rows_that_see_no_key_get_zero_gradients():
    case = Case("empty rows", kwargs={"query_lengths": np.array([3, 37]),
                                      "key_lengths": np.array([53, 0])})
    q, k, v, dout, kwargs = grads_of(case)
    dq, dk, dv = sdpa.attention_backward(dout, q, k, v, **kwargs)
    np.testing.assert_array_equal(dq[0, :, 3:], 0)
    np.testing.assert_array_equal(dq[1], 0)
    np.testing.assert_array_equal(dk[1], 0)
    np.testing.assert_array_equal(dv[1], 0)


# ---- the reference itself ---------------------------------------------------------------------------

FD_CASES = [c for c in CASES if c.name in (
    "plain", "causal_bottom_right", "bias_broadcast_heads_keys", "gqa", "everything")]


@pytest.mark.parametrize("case", FD_CASES, ids=[c.name for c in FD_CASES])
def test_reference_gradients_match_finite_differences(case: Case):
    small = Case(case.name, b=2, hq=case.hq, hkv=case.hkv, lq=5, lk=7, dk=4, dv=3,
                 kwargs=dict(case.kwargs), mask=case.mask,
                 mask_shape=None if case.mask_shape is None else case.mask_shape[:-2] + (5, 7))
    if "key_lengths" in small.kwargs:
        small.kwargs["key_lengths"] = np.array([7, 4])
    if "query_lengths" in small.kwargs:
        small.kwargs["query_lengths"] = np.array([5, 3])
    if "window" in small.kwargs:
        small.kwargs["window"] = (3, None)
    q, k, v, dout, kwargs = grads_of(small)
    q, k, v, dout = (a.astype(np.float64) for a in (q, k, v, dout))
    options = reference_options(kwargs)
    if options.bias is not None:
        options.bias = options.bias.astype(np.float64)
    dq, dk, dv, dbias, dscale = reference.backward(q, k, v, dout, options)

    def loss(q_, k_, v_, options_):
        out = reference.forward(q_, k_, v_, options_)[0]
        return float((out * dout).sum())

    def numeric(array, which):
        grad = np.zeros_like(array)
        for index in np.ndindex(array.shape):
            if np.isinf(array[index]):
                continue
            plus, minus = array.copy(), array.copy()
            plus[index] += 1e-6
            minus[index] -= 1e-6
            grad[index] = (loss(*which(plus)) - loss(*which(minus))) / 2e-6
        return grad

    def with_bias(b):
        o = reference_options(kwargs)
        o.bias = b
        return q, k, v, o

    np.testing.assert_allclose(numeric(q, lambda a: (a, k, v, options)), dq, atol=1e-6)
    np.testing.assert_allclose(numeric(k, lambda a: (q, a, v, options)), dk, atol=1e-6)
    np.testing.assert_allclose(numeric(v, lambda a: (q, k, a, options)), dv, atol=1e-6)
    if dbias is not None:
        finite = np.isfinite(options.bias)
        np.testing.assert_allclose(numeric(options.bias, with_bias)[finite], dbias[finite],
                                   atol=1e-6)
    base_scale = options.scale if options.scale is not None else 1 / np.sqrt(q.shape[-1])

    def with_scale(s):
        o = reference_options(kwargs)
        o.bias = options.bias
        o.scale = s
        return loss(q, k, v, o)

    numeric_dscale = (with_scale(base_scale + 1e-6) - with_scale(base_scale - 1e-6)) / 2e-6
    np.testing.assert_allclose(numeric_dscale, dscale, atol=1e-5)
