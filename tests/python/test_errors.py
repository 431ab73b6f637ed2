"""Bad arguments raise TypeError (dtypes) or ValueError (everything else) with a message naming them."""

from __future__ import annotations

import numpy as np
import pytest

import sdpa


@pytest.fixture
def qkv():
    rng = np.random.default_rng(9)
    return (rng.standard_normal((2, 4, 5, 8), dtype=np.float32),
            rng.standard_normal((2, 4, 6, 8), dtype=np.float32),
            rng.standard_normal((2, 4, 6, 3), dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.complex64, np.bool_, np.uint8])
@pytest.mark.parametrize("which, name", [(0, "query"), (1, "key"), (2, "value")])
def test_unsupported_input_dtype_is_a_type_error_naming_it(qkv, dtype, which, name):
    arrays = list(qkv)
    arrays[which] = arrays[which].astype(dtype)
    with pytest.raises(TypeError, match=f"{name}.dtype: expected float32"):
        sdpa.scaled_dot_product_attention(*arrays)


def test_integer_mask_is_a_type_error(qkv):
    with pytest.raises(TypeError, match="attn_mask.dtype"):
        sdpa.scaled_dot_product_attention(*qkv, np.ones((5, 6), dtype=np.int32))


def test_shape_errors_carry_the_library_message(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match=r"k.shape\[3\] \(Dk\) = 7 does not match q.shape\[3\] = 8"):
        sdpa.scaled_dot_product_attention(q, k[..., :7], v)
    with pytest.raises(ValueError, match=r"v.shape\[2\] \(Lk\) = 5 does not match k.shape\[2\] = 6"):
        sdpa.scaled_dot_product_attention(q, k, v[:, :, :5])
    with pytest.raises(ValueError, match=r"options.mask.shape\[1\] = 4: expected Lk = 6 or 1"):
        sdpa.scaled_dot_product_attention(q, k, v, np.ones((5, 4), dtype=bool))


def test_head_mismatch_without_enable_gqa_is_an_error_like_torch(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="enable_gqa=True"):
        sdpa.scaled_dot_product_attention(q, k[:, :2], v[:, :2])
    assert sdpa.scaled_dot_product_attention(q, k[:, :2], v[:, :2], enable_gqa=True).shape == (
        2, 4, 5, 3)
    with pytest.raises(ValueError, match=r"q.shape\[1\] \(Hq\) = 4: expected a multiple"):
        sdpa.scaled_dot_product_attention(q, k[:, :3], v[:, :3], enable_gqa=True)


def test_leading_dimensions_that_do_not_broadcast_are_an_error(qkv):
    q, k, v = qkv
    with pytest.raises(ValueError, match="do not broadcast"):
        sdpa.scaled_dot_product_attention(q[None].repeat(2, 0), k[None].repeat(3, 0),
                                          v[None].repeat(3, 0))


def test_rank_below_two_is_an_error(qkv):
    with pytest.raises(ValueError, match=r"query.shape = \(8,\)"):
        sdpa.scaled_dot_product_attention(np.ones(8, np.float32), *qkv[1:])


def test_dropout_is_refused_clearly(qkv):
    with pytest.raises(ValueError, match="dropout_p = 0.1: sdpa has no dropout"):
        sdpa.scaled_dot_product_attention(*qkv, dropout_p=0.1)


@pytest.mark.parametrize("kwargs, error, message", [
    ({"causal_alignment": "middle"}, ValueError, "causal_alignment = 'middle'"),
    ({"window": 3}, TypeError, "window = 3: expected"),
    ({"window": (1.5, 2)}, TypeError, "window.left = 1.5"),
    ({"window": (-2, 2)}, ValueError, r"options.window.left = -2"),
    ({"window": (2, 2), "causal_alignment": "bottom_right"}, ValueError, "needs is_causal=True"),
    ({"key_lengths": [1, 2, 3]}, ValueError, r"options.key_lengths.size\(\): expected B = 2, got 3"),
    ({"key_lengths": [1, 7]}, ValueError, r"options.key_lengths\[1\] = 7: expected 0 <= length"),
    ({"key_lengths": [-1, 2]}, ValueError, "key_lengths: -1 is out of range"),
    ({"key_lengths": [1.0, 2.0]}, TypeError, "key_lengths.dtype: expected integers"),
    ({"query_lengths": [9, 1]}, ValueError, r"options.query_lengths\[0\] = 9"),
    ({"scale": float("nan")}, ValueError, "options.scale = nan: expected a finite number"),
    ({"threads": -1}, ValueError, "options.threads = -1"),
    ({"threads": 1.5}, TypeError, "threads: expected an int"),
])
def test_bad_options_name_the_option(qkv, kwargs, error, message):
    with pytest.raises(error, match=message):
        sdpa.scaled_dot_product_attention(*qkv, **kwargs)


def test_bad_out_is_refused_and_left_untouched(qkv):
    with pytest.raises(TypeError, match="out.dtype: expected float32, got float64"):
        sdpa.scaled_dot_product_attention(*qkv, out=np.zeros((2, 4, 5, 3)))
    with pytest.raises(ValueError, match=r"out.shape = \(2, 4, 5, 4\): expected \(2, 4, 5, 3\)"):
        sdpa.scaled_dot_product_attention(*qkv, out=np.zeros((2, 4, 5, 4), np.float32))
    read_only = np.zeros((2, 4, 5, 3), np.float32)
    read_only.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        sdpa.scaled_dot_product_attention(*qkv, out=read_only)
    broadcast = np.broadcast_to(np.zeros((1, 4, 5, 3), np.float32), (2, 4, 5, 3))
    with pytest.raises(ValueError):
        sdpa.scaled_dot_product_attention(*qkv, out=broadcast)
    # Nothing is written when an argument is bad: out stays as it was.
    out = np.full((2, 4, 5, 3), 7.0, np.float32)
    with pytest.raises(ValueError):
        sdpa.scaled_dot_product_attention(*qkv, out=out, key_lengths=[1, 9])
    assert np.all(out == 7.0)


def test_backward_argument_errors(qkv):
    q, k, v = qkv
    dout = np.ones((2, 4, 5, 3), np.float32)
    with pytest.raises(ValueError, match="give both"):
        sdpa.attention_backward(dout, q, k, v, output=np.zeros_like(dout))
    with pytest.raises(ValueError, match="return_dbias: needs a float attn_mask"):
        sdpa.attention_backward(dout, q, k, v, return_dbias=True)
    with pytest.raises(ValueError, match=r"grad_output.shape = \(2, 4, 5, 4\)"):
        sdpa.attention_backward(np.ones((2, 4, 5, 4), np.float32), q, k, v)
    with pytest.raises(TypeError, match="grad_output.dtype"):
        sdpa.attention_backward(dout.astype(np.int32), q, k, v)
    with pytest.raises(ValueError, match="dropout_p"):
        sdpa.attention_backward(dout, q, k, v, dropout_p=0.5)
