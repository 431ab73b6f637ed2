"""sdpa.merge_attention: results over disjoint key blocks merge into the one-shot result."""

from __future__ import annotations

import numpy as np
import pytest

import reference
import sdpa
from conftest import assert_accurate


@pytest.mark.parametrize("parts", [1, 2, 3, 7])
def test_key_blocks_merge_to_the_full_attention(parts: int):
    rng = np.random.default_rng(parts)
    q = rng.standard_normal((2, 4, 5, 16), dtype=np.float32)
    k = rng.standard_normal((2, 2, 60, 16), dtype=np.float32)
    v = rng.standard_normal((2, 2, 60, 8), dtype=np.float32)
    mask = rng.random((5, 60)) < 0.6
    mask[1, :] = False  # a row that sees no key in any part
    cuts = np.linspace(0, 60, parts + 1).astype(int)
    outs, lses = [], []
    for a, b in zip(cuts[:-1], cuts[1:]):
        out, lse = sdpa.scaled_dot_product_attention(
            q, k[:, :, a:b], v[:, :, a:b], attn_mask=mask[:, a:b], enable_gqa=True, return_lse=True)
        outs.append(out)
        lses.append(lse)
    out, lse = sdpa.merge_attention(outs, lses)
    options = reference.Options(mask=mask)
    ref = reference.forward(q, k, v, options)
    naive = reference.forward(q, k, v, options, dtype=np.float32)
    assert out.dtype == np.float32 and out.shape == (2, 4, 5, 8) and lse.shape == (2, 4, 5)
    assert_accurate(out, ref[0], naive[0], "out")
    assert_accurate(lse, ref[1], naive[1], "lse")
    assert (out[:, :, 1] == 0).all() and (lse[:, :, 1] == -np.inf).all()


def test_rank2_parts_and_a_part_that_saw_nothing():
    outs = [np.array([[1.0, 2.0]], np.float32), np.full((1, 2), np.nan, np.float32)]
    lses = [np.array([0.5], np.float32), np.array([-np.inf], np.float32)]
    out, lse = sdpa.merge_attention(outs, lses, threads=1)
    np.testing.assert_array_equal(out, [[1.0, 2.0]])
    np.testing.assert_array_equal(lse, [0.5])


def test_mismatched_parts_raise_value_errors_naming_them():
    a = np.zeros((2, 3, 4), np.float32)
    with pytest.raises(ValueError, match="at least one part"):
        sdpa.merge_attention([], [])
    with pytest.raises(ValueError, match=r"outs\[1\].shape"):
        sdpa.merge_attention([a, np.zeros((2, 3, 5), np.float32)], [a[..., 0], a[..., 0]])
    with pytest.raises(ValueError, match=r"lses\.size\(\) = 1 does not match outs\.size\(\) = 2"):
        sdpa.merge_attention([a, a], [a[..., 0]])
    with pytest.raises(TypeError, match=r"lses\[0\].dtype"):
        sdpa.merge_attention([a], [a[..., 0].astype(np.int32)])
