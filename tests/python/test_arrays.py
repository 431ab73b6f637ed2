"""Inputs of any layout are read in place: strided, transposed, negative-stride, broadcast, DLPack."""

from __future__ import annotations

import numpy as np
import pytest

import sdpa
from sdpa import _core


def address(array: np.ndarray) -> int:
    return array.__array_interface__["data"][0]


class DLPackOnly:
    """A foreign array that offers nothing but the DLPack protocol (as torch and JAX arrays do)."""

    def __init__(self, array: np.ndarray) -> None:
        self._array = array

    def __dlpack__(self, **kwargs):
        return self._array.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self._array.__dlpack_device__()


@pytest.fixture
def qkv():
    rng = np.random.default_rng(7)
    return (rng.standard_normal((2, 3, 17, 16), dtype=np.float32),
            rng.standard_normal((2, 3, 19, 16), dtype=np.float32),
            rng.standard_normal((2, 3, 19, 8), dtype=np.float32))


def views(array: np.ndarray):
    """The same values in other memory layouts (each a view of a differently laid out buffer)."""
    reversed_keys = np.ascontiguousarray(array[:, :, ::-1])[:, :, ::-1]  # negative stride on L
    reversed_dim = np.ascontiguousarray(array[..., ::-1])[..., ::-1]     # negative stride on D
    blhd = np.ascontiguousarray(array.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
    fortran = np.asfortranarray(array)
    padded = np.zeros(array.shape[:-1] + (array.shape[-1] * 2,), np.float32)
    padded[..., ::2] = array
    return {"negative_L": reversed_keys, "negative_D": reversed_dim, "blhd": blhd,
            "fortran": fortran, "every_other": padded[..., ::2]}


@pytest.mark.parametrize("layout", ["negative_L", "negative_D", "blhd", "fortran", "every_other"])
@pytest.mark.parametrize("which", [0, 1, 2])
def test_any_strides_give_the_same_result_without_a_copy(qkv, layout, which):
    expected = sdpa.scaled_dot_product_attention(*qkv, is_causal=True)
    arrays = list(qkv)
    arrays[which] = views(arrays[which])[layout]
    assert not arrays[which].flags.c_contiguous
    assert _core.data_address(arrays[which]) == address(arrays[which])  # no copy on the way in
    np.testing.assert_array_equal(sdpa.scaled_dot_product_attention(*arrays, is_causal=True),
                                  expected)


def test_broadcast_views_have_zero_strides_and_are_read_in_place(qkv):
    q, k, v = qkv
    k_one_head = np.broadcast_to(k[:, :1], k.shape)
    v_one_head = np.broadcast_to(v[:, :1], v.shape)
    assert k_one_head.strides[1] == 0 and not k_one_head.flags.writeable
    assert _core.data_address(k_one_head) == address(k_one_head)
    expected = sdpa.scaled_dot_product_attention(q, np.ascontiguousarray(k_one_head),
                                                 np.ascontiguousarray(v_one_head))
    np.testing.assert_array_equal(
        sdpa.scaled_dot_product_attention(q, k_one_head, v_one_head), expected)
    # ... which is also multi-query attention with one key/value head:
    np.testing.assert_array_equal(
        sdpa.scaled_dot_product_attention(q, k[:, :1], v[:, :1]), expected)


def test_broadcast_mask_is_read_in_place(qkv):
    q, k, v = qkv
    row = np.random.default_rng(0).random(19) < 0.6
    mask = np.broadcast_to(row, (2, 3, 17, 19))
    np.testing.assert_array_equal(sdpa.scaled_dot_product_attention(q, k, v, mask),
                                  sdpa.scaled_dot_product_attention(q, k, v, row))


def test_dlpack_objects_are_read_in_place(qkv):
    q, k, v = qkv
    q_view = q[:, :, ::-1]
    foreign = DLPackOnly(q_view)
    assert address(np.from_dlpack(foreign)) == address(q_view)
    np.testing.assert_array_equal(
        sdpa.scaled_dot_product_attention(foreign, DLPackOnly(k), DLPackOnly(v)),
        sdpa.scaled_dot_product_attention(q_view, k, v))


def test_read_only_inputs_are_accepted(qkv):
    for array in qkv:
        array.flags.writeable = False
    assert sdpa.scaled_dot_product_attention(*qkv).shape == (2, 3, 17, 8)


def test_nested_lists_are_accepted():
    q = [[[1.0, 0.0], [0.0, 1.0]]]
    out = sdpa.scaled_dot_product_attention(q, q, [[[1.0], [3.0]]])
    assert out.shape == (1, 2, 1) and out.dtype == np.float32


def test_the_gil_is_released_while_the_kernels_run():
    import threading
    import time

    rng = np.random.default_rng(8)
    q, k, v = (rng.standard_normal((1, 8, 1024, 64), dtype=np.float32) for _ in range(3))
    done = threading.Event()
    span = {}

    def compute():
        start = time.perf_counter()
        sdpa.scaled_dot_product_attention(q, k, v, threads=1)
        span["seconds"] = time.perf_counter() - start
        done.set()

    worker = threading.Thread(target=compute)
    last, longest_gap = time.perf_counter(), 0.0
    worker.start()
    while not done.is_set():  # this thread keeps running only if the worker let go of the GIL
        now = time.perf_counter()
        longest_gap, last = max(longest_gap, now - last), now
    worker.join()
    assert longest_gap < span["seconds"] / 2, (longest_gap, span["seconds"])
