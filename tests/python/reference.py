"""The NumPy reference of attention and its gradients, written from the math (float64 by default).

Run with dtype=np.float32 it is also the "naive32" baseline of the accuracy rule:
max|sdpa - ref64| <= 2 * max|naive32 - ref64| + 1e-6   (as in FlashAttention's tests).

Shapes: q [B, Hq, Lq, Dk], k [B, Hkv, Lk, Dk], v [B, Hkv, Lk, Dv]; mask/bias broadcast against
[B, Hq, Lq, Lk]; query head h reads key/value head h // (Hq // Hkv).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np


@dataclass
class Options:
    mask: Optional[np.ndarray] = None  # bool, True = attend
    bias: Optional[np.ndarray] = None  # float, added to the scaled scores
    scale: Optional[float] = None
    causal: str = "none"  # none | top_left | bottom_right
    window: Optional[Tuple[int, int]] = None  # (left, right), -1 = unbounded
    key_lengths: Optional[np.ndarray] = None
    query_lengths: Optional[np.ndarray] = None
    softcap: float = 0.0  # c > 0: scaled scores become c·tanh(s / c) before the bias
    sinks: Optional[np.ndarray] = None  # [Hq]: one more logit per row of head h, with no value


def visible_keys(lq: int, lk: int, o: Options, b: int) -> np.ndarray:
    """bool [Lq, Lk]: the keys each row sees from causal / window / lengths (not the mask)."""
    qlen = lq if o.query_lengths is None else int(o.query_lengths[b])
    klen = lk if o.key_lengths is None else int(o.key_lengths[b])
    i = np.arange(lq)[:, None]
    j = np.arange(lk)[None, :]
    diagonal = i + (klen - qlen) if o.causal == "bottom_right" else i
    visible = (j < klen) & (i < qlen)
    if o.causal != "none":
        visible &= j <= diagonal
    if o.window is not None:
        left, right = o.window
        if left >= 0:
            visible &= j >= diagonal - left
        if right >= 0:
            visible &= j <= diagonal + right
    return visible


def _expand_heads(x: np.ndarray, heads_q: int) -> np.ndarray:
    return np.repeat(x, heads_q // x.shape[1], axis=1)


def _scores(q, k, o: Options, dtype):
    """Raw scores q·kᵀ, masked scaled logits and the visibility, all [B, Hq, Lq, Lk]."""
    batch, heads_q, lq, dk = q.shape
    lk = k.shape[2]
    scale = dtype(1.0 / np.sqrt(dk)) if o.scale is None else dtype(o.scale)
    raw = q.astype(dtype) @ _expand_heads(k.astype(dtype), heads_q).swapaxes(-1, -2)
    logits = raw * scale
    if o.softcap:
        logits = dtype(o.softcap) * np.tanh(logits / dtype(o.softcap))
    if o.bias is not None:
        logits = logits + o.bias.astype(dtype)
    visible = np.stack([visible_keys(lq, lk, o, b) for b in range(batch)])[:, None]
    if o.mask is not None:
        visible = visible & o.mask
    visible = np.broadcast_to(visible, logits.shape)
    logits = np.where(visible, logits, -np.inf)
    return raw, logits, scale


def _sink_logits(q, o: Options, dtype) -> np.ndarray:
    """[B, Hq, Lq, 1]: each row's sink logit (-inf: none; padding rows have none)."""
    batch, heads_q, lq, _ = q.shape
    sinks = np.full((batch, heads_q, lq, 1), -np.inf, dtype)
    if o.sinks is not None:
        for b in range(batch):
            qlen = lq if o.query_lengths is None else int(o.query_lengths[b])
            sinks[b, :, :qlen, 0] = np.asarray(o.sinks, dtype)[:, None]
    return sinks


def forward(q, k, v, o: Options = Options(), dtype=np.float64):
    """out [B, Hq, Lq, Dv], lse [B, Hq, Lq], weights [B, Hq, Lq, Lk]; empty rows give 0 / -inf / 0
    (with a sink: 0 / sink / 0)."""
    _, logits, _ = _scores(q, k, o, dtype)
    sink = _sink_logits(q, o, dtype)
    with np.errstate(invalid="ignore"):
        row_max = logits.max(axis=-1, keepdims=True) if logits.shape[-1] else np.full(
            logits.shape[:-1] + (1,), -np.inf, dtype)
    row_max = np.maximum(row_max, sink)
    finite_max = np.where(np.isfinite(row_max), row_max, 0).astype(dtype)
    e = np.exp(logits - finite_max)
    total = e.sum(axis=-1, keepdims=True) + np.exp(sink - finite_max)
    weights = np.where(total > 0, e / np.where(total > 0, total, 1), 0).astype(dtype)
    out = weights @ _expand_heads(v.astype(dtype), q.shape[1])
    with np.errstate(divide="ignore"):
        lse = np.where(total[..., 0] > 0, finite_max[..., 0] + np.log(total[..., 0]), -np.inf)
    return out, lse.astype(dtype), weights


def unbroadcast(grad: np.ndarray, shape) -> np.ndarray:
    """Sum a gradient over the dimensions that `shape` broadcast (right-aligned)."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad


def _group_sum(x: np.ndarray, heads_kv: int) -> np.ndarray:
    batch, heads_q = x.shape[:2]
    return x.reshape(batch, heads_kv, heads_q // heads_kv, *x.shape[2:]).sum(axis=2)


def backward(q, k, v, dout, o: Options = Options(), dtype=np.float64):
    """dq, dk, dv, dbias (None without a bias), dscale of the loss sum(out * dout)."""
    raw, _, scale = _scores(q, k, o, dtype)
    _, _, p = forward(q, k, v, o, dtype)
    heads_q, heads_kv = q.shape[1], k.shape[1]
    dout = dout.astype(dtype)
    dp = dout @ _expand_heads(v.astype(dtype), heads_q).swapaxes(-1, -2)
    delta = (p * dp).sum(axis=-1, keepdims=True)  # = rowsum(dO ∘ O)
    ds = p * (dp - delta)  # gradient of the logits
    dscore = ds  # gradient of scale·q·k: through the softcap's tanh when there is one
    if o.softcap:
        dscore = ds * (1 - np.tanh(raw * scale / dtype(o.softcap)) ** 2)
    dq = scale * (dscore @ _expand_heads(k.astype(dtype), heads_q))
    dk = _group_sum(scale * (dscore.swapaxes(-1, -2) @ q.astype(dtype)), heads_kv)
    dv = _group_sum(p.swapaxes(-1, -2) @ dout, heads_kv)
    dbias = None if o.bias is None else unbroadcast(ds, o.bias.shape)
    dscale = float((dscore * np.where(p > 0, raw, 0)).sum())
    return dq, dk, dv, dbias, dscale


def sink_gradient(q, k, v, dout, o: Options, dtype=np.float64) -> np.ndarray:
    """dL/d(sinks) [Hq] = -Σ_{b, i} p_sink · rowsum(dO ∘ O)."""
    out, lse, _ = forward(q, k, v, o, dtype)
    sink = _sink_logits(q, o, dtype)[..., 0]
    with np.errstate(invalid="ignore"):
        p_sink = np.where(np.isfinite(sink), np.exp(sink - np.where(np.isfinite(lse), lse, 0)), 0)
    delta = (dout.astype(dtype) * out).sum(axis=-1)
    return -(p_sink * delta).sum(axis=(0, 2)).astype(dtype)


def dscale_condition(q, k, v, dout, o: Options = Options()) -> float:
    """Σ p·(|dP| + |D|)·|q·k|: what fp32 rounding of d(scale)'s terms is proportional to."""
    raw, _, _ = _scores(q, k, o, np.float64)
    _, _, p = forward(q, k, v, o)
    dp = dout.astype(np.float64) @ _expand_heads(v.astype(np.float64), q.shape[1]).swapaxes(-1, -2)
    delta = (p * dp).sum(axis=-1, keepdims=True)
    return float((p * (np.abs(dp) + np.abs(delta)) * np.where(p > 0, np.abs(raw), 0)).sum())
