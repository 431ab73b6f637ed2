"""Against torch.nn.functional.scaled_dot_product_attention, and the autograd wrapper (skipped when
torch is not installed; the test command does not install it)."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import sdpa  # noqa: E402
import sdpa.torch  # noqa: E402


def tensors(hq=4, hkv=4, lq=33, lk=47, d=32, dv=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(2, hq, lq, d, generator=g), torch.randn(2, hkv, lk, d, generator=g),
            torch.randn(2, hkv, lk, dv, generator=g))


@pytest.mark.parametrize("kwargs", [
    {}, {"is_causal": True}, {"scale": 0.3}, {"enable_gqa": True},
], ids=["plain", "causal_top_left", "scale", "gqa"])
@pytest.mark.parametrize("lq", [33, 60])
def test_matches_torch(kwargs, lq):
    q, k, v = tensors(hkv=2 if kwargs.get("enable_gqa") else 4, lq=lq)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), **kwargs)
    np.testing.assert_allclose(sdpa.scaled_dot_product_attention(q, k, v, **kwargs),
                               expected.numpy(), atol=2e-6)


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.float32])
def test_masks_match_torch(mask_dtype):
    q, k, v = tensors()
    g = torch.Generator().manual_seed(1)
    if mask_dtype == torch.bool:
        mask = torch.rand(33, 47, generator=g) < 0.7
    else:
        mask = torch.randn(4, 1, 47, generator=g)
    expected = F.scaled_dot_product_attention(q.double(), k.double(), v.double(),
                                              mask if mask_dtype == torch.bool else mask.double())
    np.testing.assert_allclose(sdpa.scaled_dot_product_attention(q, k, v, mask), expected.numpy(),
                               atol=2e-6)


def test_strided_tensors_are_read_in_place():
    q, k, v = tensors()
    q_blhd = q.transpose(1, 2).contiguous().transpose(1, 2)
    assert sdpa._core.data_address(np.from_dlpack(q_blhd)) == q_blhd.data_ptr()
    np.testing.assert_array_equal(sdpa.scaled_dot_product_attention(q_blhd, k, v),
                                  sdpa.scaled_dot_product_attention(q, k, v))


def test_autograd_function_matches_torch_gradients():
    q, k, v = (t.double().requires_grad_() for t in tensors(hq=4, hkv=2))
    bias = torch.randn(1, 4, 33, 47, dtype=torch.float64, requires_grad=True)
    dout = torch.randn(2, 4, 33, 24, dtype=torch.float64)
    expected = F.scaled_dot_product_attention(q, k, v, bias, enable_gqa=True)
    expected.backward(dout)
    reference = [t.grad.clone() for t in (q, k, v, bias)]
    for t in (q, k, v, bias):
        t.grad = None
    out = sdpa.torch.scaled_dot_product_attention(q, k, v, bias, enable_gqa=True)
    assert out.dtype == torch.float64
    out.backward(dout)
    np.testing.assert_allclose(out.detach().numpy(), expected.detach().numpy(), atol=2e-6)
    for t, r in zip((q, k, v, bias), reference):
        np.testing.assert_allclose(t.grad.numpy(), r.numpy(), atol=2e-5)
