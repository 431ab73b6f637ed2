"""sdpa inside torch.autograd: `SDPAFunction` and a drop-in `scaled_dot_product_attention`.

Importing this module imports torch (`import sdpa` alone never does). Tensors must be on the CPU;
float32 tensors are read in place, float64 ones are converted (the result is cast back to the
query's dtype). The backward is sdpa's exact FlashAttention-2 backward.

    import sdpa.torch
    out = sdpa.torch.scaled_dot_product_attention(q, k, v, is_causal=True)
    out.sum().backward()     # q.grad, k.grad, v.grad (and a float attn_mask's grad)
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import torch

from ._attention import attention_backward
from ._attention import scaled_dot_product_attention as _forward

__all__ = ["SDPAFunction", "scaled_dot_product_attention"]


def _cpu(tensor: Optional[torch.Tensor], name: str) -> Optional[torch.Tensor]:
    if tensor is not None and tensor.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor, got one on {tensor.device}")
    return None if tensor is None else tensor.detach()


class SDPAFunction(torch.autograd.Function):
    """apply(query, key, value, attn_mask, is_causal, scale, enable_gqa, options) -> output.

    `options` is a dict of the keyword-only arguments of sdpa.scaled_dot_product_attention
    (causal_alignment, window, key_lengths, query_lengths, threads). Gradients flow to query, key,
    value and a float attn_mask.
    """

    @staticmethod
    def forward(ctx: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attn_mask: Optional[torch.Tensor], is_causal: bool, scale: Optional[float],
                enable_gqa: bool, options: dict) -> torch.Tensor:
        q, k, v = _cpu(query, "query"), _cpu(key, "key"), _cpu(value, "value")
        mask = _cpu(attn_mask, "attn_mask")
        out, lse = _forward(q, k, v, mask, 0.0, is_causal, scale, enable_gqa, return_lse=True,
                            **options)
        out_t, lse_t = torch.from_numpy(out), torch.from_numpy(lse)
        ctx.save_for_backward(q, k, v, mask, out_t, lse_t)
        ctx.call = (is_causal, scale, enable_gqa, options)
        return out_t.to(query.dtype)

    @staticmethod
    def backward(ctx: Any, grad_output: torch.Tensor) -> Tuple[Optional[torch.Tensor], ...]:
        q, k, v, mask, out, lse = ctx.saved_tensors
        is_causal, scale, enable_gqa, options = ctx.call
        want_dbias = mask is not None and mask.is_floating_point() and ctx.needs_input_grad[3]
        grads = attention_backward(grad_output.detach(), q, k, v, mask, 0.0, is_causal, scale,
                                   enable_gqa, output=out, lse=lse, return_dbias=want_dbias,
                                   **options)
        dq, dk, dv = (torch.from_numpy(g).to(t.dtype) for g, t in zip(grads[:3], (q, k, v)))
        dmask = torch.from_numpy(grads[3]).to(mask.dtype) if want_dbias else None
        return dq, dk, dv, dmask, None, None, None, None


def scaled_dot_product_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: Optional[torch.Tensor] = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    causal_alignment: str = "top_left",
    window: Optional[Tuple[Optional[int], Optional[int]]] = None,
    key_lengths: Any = None,
    query_lengths: Any = None,
    threads: Optional[int] = None,
) -> torch.Tensor:
    """torch.nn.functional.scaled_dot_product_attention computed by sdpa, differentiable.

    Same arguments as sdpa.scaled_dot_product_attention (dropout_p must be 0.0); returns a tensor
    of the query's dtype.
    """
    if dropout_p != 0.0:
        raise ValueError(f"dropout_p = {dropout_p}: sdpa has no dropout yet; pass dropout_p=0.0")
    options = {"causal_alignment": causal_alignment, "window": window, "key_lengths": key_lengths,
               "query_lengths": query_lengths, "threads": threads}
    return SDPAFunction.apply(query, key, value, attn_mask, is_causal, scale, enable_gqa, options)
