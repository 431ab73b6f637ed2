"""The torch-style front end: argument handling around the library's forward and backward.

Every array is turned into a NumPy view (zero-copy for float32, float16 and bfloat16 NumPy arrays
and for DLPack-capable CPU arrays such as torch tensors and JAX arrays, any strides), reshaped to
the library's [B, H, L, D] rank by adding or merging leading dimensions, and handed to the C++
library, whose own validate() checks every shape and value (its messages arrive as ValueError).

16-bit inputs: query, key and value all float16, or all bfloat16 (ml_dtypes.bfloat16 NumPy arrays,
torch.bfloat16 tensors), run in that dtype (fp32 accumulation; the output in that dtype); any other
mix of float dtypes is converted to float32. float64 is converted to float32.
"""

from __future__ import annotations

import numbers
from typing import Any, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core

try:  # bfloat16 NumPy arrays exist only with ml_dtypes; without it none can be passed
    import ml_dtypes as _ml_dtypes

    _BFLOAT16: Optional[np.dtype] = np.dtype(_ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is installed with the tests
    _BFLOAT16 = None
_FLOAT16 = np.dtype(np.float16)
_CONVERTED_FLOATS = tuple(d for d in (np.dtype(np.float64), _FLOAT16, _BFLOAT16) if d is not None)
_ALIGNMENTS = ("top_left", "bottom_right")


def _is_16bit(dtype: np.dtype) -> bool:
    return dtype == _FLOAT16 or (_BFLOAT16 is not None and dtype == _BFLOAT16)


def _library(array: np.ndarray) -> np.ndarray:
    """The array as the bindings take it: bfloat16 as its uint16 bit patterns (a view)."""
    if _BFLOAT16 is not None and array.dtype == _BFLOAT16:
        return array.view(np.uint16)
    return array


def _from_torch_bfloat16(array: Any, name: str) -> np.ndarray:
    """A torch.bfloat16 tensor as an ml_dtypes.bfloat16 NumPy view (NumPy's DLPack has no
    bfloat16: the tensor is exported as int16 bit patterns and viewed back, no copy)."""
    if _BFLOAT16 is None:
        raise TypeError(f"{name}: bfloat16 tensors need the ml_dtypes package")
    import torch  # only reached for torch tensors

    return np.from_dlpack(array.view(torch.int16)).view(_BFLOAT16)


# ---- arrays ---------------------------------------------------------------------------------------


def _as_numpy(array: Any, name: str) -> np.ndarray:
    """A NumPy view of `array` without a copy where the producer allows one."""
    if isinstance(array, np.ndarray):
        return array
    if getattr(array, "requires_grad", False) and hasattr(array, "detach"):
        array = array.detach()  # torch refuses to export a tensor that requires grad
    if str(getattr(array, "dtype", "")) == "torch.bfloat16" and hasattr(array, "__dlpack__"):
        return _from_torch_bfloat16(array, name)
    if hasattr(array, "__dlpack__"):
        try:
            return np.from_dlpack(array)
        except (TypeError, BufferError, RuntimeError, ValueError) as error:
            raise TypeError(
                f"{name}: cannot read this {type(array).__name__} through DLPack ({error}); "
                "expected a CPU array of float32, float16 or bfloat16 (or float64, converted)"
            ) from error
    try:
        return np.asarray(array)
    except Exception as error:  # noqa: BLE001 - whatever NumPy refused, report it as a type error
        raise TypeError(f"{name}: cannot be read as an array: {error}") from error


def _float32(array: Any, name: str) -> np.ndarray:
    """float32 as is (any strides, no copy); float64, float16 and bfloat16 converted; anything else
    refused."""
    return _float(array, name, keep_16bit=False)


def _float(array: Any, name: str, keep_16bit: bool) -> np.ndarray:
    """float32 as is (any strides, no copy), float16 / bfloat16 as is when keep_16bit, other
    floats converted to float32; anything else refused."""
    array = _as_numpy(array, name)
    if array.dtype == np.float32 or (keep_16bit and _is_16bit(array.dtype)):
        return array
    if array.dtype in _CONVERTED_FLOATS:
        return array.astype(np.float32)
    raise TypeError(
        f"{name}.dtype: expected float32, float16 or bfloat16 (float64 is converted), got "
        f"{array.dtype}"
    )


def _lengths(lengths: Any, name: str) -> Optional[np.ndarray]:
    if lengths is None:
        return None
    array = _as_numpy(lengths, name)
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name}.dtype: expected integers, got {array.dtype}")
    array = array.reshape(-1)
    if array.size and (array.min() < 0 or array.max() > np.iinfo(np.int32).max):
        bad = array[(array < 0) | (array > np.iinfo(np.int32).max)][0]
        raise ValueError(f"{name}: {bad} is out of range (expected 0 <= length < 2**31)")
    return np.ascontiguousarray(array, dtype=np.int32)


# ---- ranks: (..., H, L, D) <-> [B, H, L, D] -------------------------------------------------------


def _batched(array: np.ndarray, name: str, tail: int = 3) -> np.ndarray:
    """The library's rank (tail + 1): one leading batch dimension B.

    (L, D) -> [1, 1, L, D], (H, L, D) -> [1, H, L, D], (*lead, H, L, D) -> [prod(lead), H, L, D]
    (a view whenever the strides allow one); likewise with tail=2 for per-row arrays (..., H, L).
    """
    rank = tail + 1
    if array.ndim < tail - 1:
        raise ValueError(f"{name}.shape = {array.shape}: expected at least {tail - 1} dimensions")
    if array.ndim <= rank:
        return array[(None,) * (rank - array.ndim)]
    batch = int(np.prod(array.shape[:-tail]))
    return array.reshape((batch,) + array.shape[-tail:])


def _copy_back(view: np.ndarray, array: np.ndarray) -> None:
    """Where `view` had to be a copy of `array` (leading dimensions that do not merge), copy back."""
    if not np.shares_memory(view, array):
        array[...] = view.reshape(array.shape)


def _padded(array: np.ndarray, rank: int) -> np.ndarray:
    """`array` with leading dimensions of size 1 up to `rank` (a view)."""
    return array[(None,) * (rank - array.ndim)]


def _broadcast(array: np.ndarray, shape: Tuple[int, ...], name: str) -> np.ndarray:
    """A zero-copy view of `array` broadcast to `shape` (stride 0 on the broadcast dimensions)."""
    if array.shape == shape:
        return array
    try:
        return np.broadcast_to(array, shape)
    except ValueError as error:
        raise ValueError(f"{name}.shape = {array.shape} cannot broadcast to {shape}") from error


def _mask4(mask: np.ndarray, full: Tuple[int, ...]) -> np.ndarray:
    """The mask or bias as the library takes it: rank <= 4, right-aligned against [B, Hq, Lq, Lk].

    `full` is the caller's (*lead, Hq, Lq, Lk). Leading dimensions of size 1 are dropped; beyond
    rank 4 the mask is broadcast to the leading shape and merged like the inputs.
    """
    while mask.ndim > min(len(full), 4) and mask.shape[0] == 1:
        mask = mask[0]
    if mask.ndim > len(full):
        raise ValueError(f"attn_mask.shape = {mask.shape} cannot broadcast to {full}")
    if len(full) <= 4:
        return mask  # the library checks and broadcasts the rest
    padded = _padded(mask, len(full))
    merged = _broadcast(padded, full[:-3] + padded.shape[-3:], "attn_mask")
    return _batched(merged, "attn_mask")


def _unbroadcast(grad: np.ndarray, shape: Tuple[int, ...]) -> np.ndarray:
    """Sum `grad` down to `shape` (the gradient of a broadcast)."""
    while grad.ndim > len(shape):
        grad = grad.sum(axis=0)
    grad = grad.reshape((1,) * (len(shape) - grad.ndim) + grad.shape)
    for axis, size in enumerate(shape):
        if size == 1 and grad.shape[axis] != 1:
            grad = grad.sum(axis=axis, keepdims=True)
    return grad.reshape(shape)


# ---- options ----------------------------------------------------------------------------------------


class _Call:
    """One call's arguments, resolved for the library: rank-4 views and keyword options."""

    def __init__(
        self,
        query: Any,
        key: Any,
        value: Any,
        attn_mask: Any,
        dropout_p: float,
        is_causal: bool,
        scale: Optional[float],
        enable_gqa: bool,
        causal_alignment: str,
        window: Optional[Tuple[Optional[int], Optional[int]]],
        key_lengths: Any,
        query_lengths: Any,
        threads: Optional[int],
        softcap: float = 0.0,
        sinks: Any = None,
        widen: bool = False,
    ) -> None:
        """widen: give the library float32 copies of 16-bit inputs (the backward: it widens them
        itself anyway); self.dtype stays the inputs' 16-bit dtype, the dtype of the results."""
        if dropout_p != 0.0:
            raise ValueError(
                f"dropout_p = {dropout_p}: sdpa has no dropout yet; pass dropout_p=0.0 "
                "(for inference, or apply dropout outside attention)"
            )
        if causal_alignment not in _ALIGNMENTS:
            raise ValueError(
                f"causal_alignment = {causal_alignment!r}: expected 'top_left' or 'bottom_right'"
            )
        self.query = _float(query, "query", keep_16bit=True)
        self.key = _float(key, "key", keep_16bit=True)
        self.value = _float(value, "value", keep_16bit=True)
        # One 16-bit dtype for all three runs in it; any other mix runs in float32.
        dtypes = {self.query.dtype, self.key.dtype, self.value.dtype}
        self.dtype = self.query.dtype if len(dtypes) == 1 else np.dtype(np.float32)
        if widen or not _is_16bit(self.dtype):
            self.query, self.key, self.value = (
                a.astype(np.float32, copy=False) for a in (self.query, self.key, self.value))
        for name, array in (("query", self.query), ("key", self.key), ("value", self.value)):
            if array.ndim < 2:
                raise ValueError(f"{name}.shape = {array.shape}: expected (..., L, E)")
        # Broadcast the leading dimensions as torch does (zero-copy views), then merge them into
        # the library's one batch dimension: (*lead, H, L, E) -> [B, H, L, E].
        self.rank = max(self.query.ndim, self.key.ndim, self.value.ndim)
        q, k, v = (_padded(a, max(self.rank, 3)) for a in (self.query, self.key, self.value))
        heads_q, heads_kv = q.shape[-3], k.shape[-3]
        if not enable_gqa and heads_kv != heads_q:
            if heads_q == 1:  # one query head against many: torch broadcasts it
                heads_q = heads_kv
            elif heads_kv != 1:  # (a single key/value head is served by the GQA path)
                raise ValueError(
                    f"key.shape[-3] (Hkv) = {heads_kv} does not match query.shape[-3] (Hq) = "
                    f"{heads_q}; pass enable_gqa=True for grouped-query attention"
                )
        try:
            self.lead = np.broadcast_shapes(q.shape[:-3], k.shape[:-3], v.shape[:-3])
        except ValueError as error:
            raise ValueError(
                f"the leading dimensions of query {self.query.shape}, key {self.key.shape} and "
                f"value {self.value.shape} do not broadcast"
            ) from error
        q = _broadcast(q, self.lead + (heads_q,) + q.shape[-2:], "query")
        k = _broadcast(k, self.lead + k.shape[-3:], "key")
        v = _broadcast(v, self.lead + v.shape[-3:], "value")
        self.q, self.k, self.v = (_library(_batched(a, name)) for a, name in
                                  ((q, "query"), (k, "key"), (v, "value")))
        # The caller's output shape: (*lead, Hq, Lq, Ev), less the padding of rank-2 inputs.
        self.out_shape = (self.lead + (heads_q, q.shape[-2], v.shape[-1]))[-self.rank :]
        self.options: dict = {"threads": _threads(threads)}
        if scale is not None:
            self.options["scale"] = float(scale)
        self.options["causal"] = causal_alignment if is_causal else "none"
        if window is not None:
            if causal_alignment == "bottom_right" and not is_causal:
                raise ValueError(
                    "window with causal_alignment='bottom_right' needs is_causal=True: the library "
                    "aligns a window bottom-right only together with the causal mask"
                )
            self.options["window"] = _window(window)
        self.mask_shape: Optional[Tuple[int, ...]] = None
        if attn_mask is not None:
            mask = _as_numpy(attn_mask, "attn_mask")
            if mask.dtype == np.bool_:
                self.options["mask"] = _mask4(mask, self.scores_shape())
            else:
                mask = _float32(mask, "attn_mask")  # dtype check: float, else TypeError
                self.mask_shape = mask.shape
                self.options["bias"] = _mask4(mask, self.scores_shape())
        kl = _lengths(key_lengths, "key_lengths")
        ql = _lengths(query_lengths, "query_lengths")
        if kl is not None:
            self.options["key_lengths"] = kl
        if ql is not None:
            self.options["query_lengths"] = ql
        if not isinstance(softcap, numbers.Real) or isinstance(softcap, bool):
            raise TypeError(f"softcap: expected a float, got {type(softcap).__name__}")
        if softcap != 0:
            self.options["softcap"] = float(softcap)  # the library checks finite and >= 0
        self.sinks_shape: Optional[Tuple[int, ...]] = None
        if sinks is not None:
            sinks = _float32(sinks, "sinks")
            self.sinks_shape = sinks.shape
            self.options["sinks"] = sinks  # [Hq], any stride; the library checks shape and values

    def scores_shape(self) -> Tuple[int, ...]:
        """(*lead, Hq, Lq, Lk): what a mask broadcasts to (rank max(query.ndim, 3) at least)."""
        return self.lead + (self.q.shape[1], self.q.shape[2], self.k.shape[2])

    def shaped(self, array: np.ndarray) -> np.ndarray:
        """A library result ([B, H, L, X] or [B, H, L]) in the caller's leading shape."""
        full = self.lead + array.shape[1:]
        return array.reshape(full[max(3 - self.rank, 0) :])  # rank-2 calls have no head dim

    def batched(self, array: Any, name: str, shape: Tuple[int, ...]) -> np.ndarray:
        """A caller-shaped float32 array (output, grad_output, lse) in the library's rank."""
        array = _float32(array, name)
        if array.shape != shape:
            raise ValueError(f"{name}.shape = {array.shape}: expected {shape}")
        return _batched(_padded(array, len(shape) + max(3 - self.rank, 0)), name,
                        tail=3 if len(shape) == self.rank else 2)


def _threads(threads: Optional[int]) -> int:
    if threads is None:
        return 0
    if not isinstance(threads, numbers.Integral) or isinstance(threads, bool):
        raise TypeError(f"threads: expected an int or None, got {type(threads).__name__}")
    return int(threads)


def _window(window: Any) -> Tuple[int, int]:
    try:
        left, right = window
    except (TypeError, ValueError) as error:
        raise TypeError(
            f"window = {window!r}: expected (left, right), each an int >= 0 or None (unbounded)"
        ) from error
    sides = []
    for side_name, side in (("left", left), ("right", right)):
        if side is None:
            sides.append(-1)
        elif isinstance(side, numbers.Integral) and not isinstance(side, bool):
            sides.append(int(side))
        else:
            raise TypeError(f"window.{side_name} = {side!r}: expected an int >= 0 or None")
    return sides[0], sides[1]


# ---- the public functions ---------------------------------------------------------------------------


def scaled_dot_product_attention(
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    causal_alignment: str = "top_left",
    window: Optional[Tuple[Optional[int], Optional[int]]] = None,
    key_lengths: Any = None,
    query_lengths: Any = None,
    return_lse: bool = False,
    return_weights: bool = False,
    threads: Optional[int] = None,
    out: Optional[np.ndarray] = None,
    softcap: float = 0.0,
    sinks: Any = None,
) -> Union[np.ndarray, Tuple[np.ndarray, ...]]:
    """softmax(query @ key.T * scale + mask) @ value, exactly, on CPU; the torch function's semantics.

    Args:
        query: (..., Hq, Lq, E) array: NumPy, or any DLPack-capable CPU array (torch, JAX).
            float32, float16 and bfloat16 (ml_dtypes.bfloat16, torch.bfloat16) are read in place
            whatever their strides (negative and zero strides included): query, key and value
            all float16 or all bfloat16 run in that dtype (products and softmax accumulated in
            fp32; with bfloat16 on AVX512_BF16 the products use vdpbf16ps and the probabilities
            are rounded to bfloat16 for P @ V); float64 and any mix of dtypes are converted to
            float32 (a copy). Shapes (Lq, E) and (Hq, Lq, E) are allowed, as are leading batch
            dimensions beyond one.
        key: (..., Hkv, Lk, E), same rank and leading shape as query.
        value: (..., Hkv, Lk, Ev).
        attn_mask: broadcastable to (..., Hq, Lq, Lk). bool: True = attend (as in torch);
            a float array is added to the scaled scores (-inf hides a key).
        dropout_p: must be 0.0 (sdpa has no dropout; anything else raises ValueError).
        is_causal: hide keys after each query's diagonal position: top-left aligned as in torch
            (query i sees keys j <= i), or bottom-right with causal_alignment="bottom_right"
            (query i sees keys j <= i + Lk - Lq: the KV-cache case). Unlike torch, it may be
            combined with attn_mask.
        scale: factor applied to query @ key.T; default 1/sqrt(E).
        enable_gqa: grouped-query attention: Hq a multiple of Hkv, query head h reading key/value
            head h // (Hq // Hkv). Without it Hkv must equal Hq (or be 1, which broadcasts), as in
            torch.
        causal_alignment: "top_left" (default, torch) or "bottom_right".
        window: (left, right): query at diagonal position p sees keys p - left .. p + right;
            None on a side means unbounded.
        key_lengths: B integers (B = the product of the leading dimensions, 1 for rank 3): keys
            j >= key_lengths[b] are padding.
        query_lengths: B integers: rows i >= query_lengths[b] are padding (output 0, lse -inf).
        return_lse: also return the natural-log log-sum-exp of each row, (..., Hq, Lq).
        return_weights: also return the softmax weights, (..., Hq, Lq, Lk) (O(L^2) memory).
        threads: OpenMP threads; None = all. Results are bitwise identical for any count.
        out: a NumPy array of the output's shape to write into (any strides): float32, or the
            inputs' dtype when that is float16 / bfloat16.
        softcap: logit softcap c (Gemma 2); 0 = off, else finite and > 0: the scaled scores
            become c * tanh(scores / c) BEFORE the float mask is added and the masks applied.
        sinks: attention sinks, a float array of shape (Hq,): query head h's rows get one more
            logit sinks[h] in their softmax, with no value (it absorbs probability mass; -inf =
            no sink). out sums over the real keys; lse includes the sink; a row that sees no key
            gives output 0 and lse sinks[h]; weights are the keys' probabilities (rows sum to
            1 - p_sink). Padding rows (query_lengths) have no sink.

    Returns:
        The output, a NumPy array of shape (..., Hq, Lq, Ev) in the inputs' dtype (float32,
        float16 or ml_dtypes.bfloat16; float32 for float64 or mixed inputs); with return_lse or
        return_weights, a tuple (out, lse) / (out, weights) / (out, lse, weights). A row that sees
        no key gives output 0 and lse -inf (sinks[h] with sinks), never NaN.

    Raises:
        TypeError: an input of an unsupported dtype (integers, complex, ...).
        ValueError: bad shapes or values, with the library's message naming the argument.
    """
    call = _Call(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                 causal_alignment, window, key_lengths, query_lengths, threads, softcap, sinks)
    b, hq, lq, _ = call.q.shape
    lk, dv = call.k.shape[2], call.v.shape[3]
    if out is None:
        out4 = np.empty((b, hq, lq, dv), dtype=call.dtype)
    else:
        if not isinstance(out, np.ndarray):
            out = _as_numpy(out, "out")
        if out.dtype not in (np.dtype(np.float32), call.dtype):
            expected = "float32" if call.dtype == np.float32 else f"float32 or {call.dtype}"
            raise TypeError(f"out.dtype: expected {expected}, got {out.dtype}")
        if not out.flags.writeable:
            raise ValueError("out: expected a writable array, got a read-only one")
        if out.shape != call.out_shape:
            raise ValueError(f"out.shape = {out.shape}: expected {call.out_shape}")
        out4 = _batched(_padded(out, max(out.ndim, 3)), "out")
    lse = np.empty((b, hq, lq), dtype=np.float32) if return_lse else None
    weights = np.empty((b, hq, lq, lk), dtype=np.float32) if return_weights else None
    _core.forward(call.q, call.k, call.v, _library(out4), lse=lse, weights=weights, **call.options)
    if out is None:
        result = call.shaped(out4)
    else:
        _copy_back(out4, out)
        result = out
    if not (return_lse or return_weights):
        return result
    extras = []
    if lse is not None:
        extras.append(call.shaped(lse))
    if weights is not None:
        extras.append(call.shaped(weights))
    return (result, *extras)


def attention_backward(
    grad_output: Any,
    query: Any,
    key: Any,
    value: Any,
    attn_mask: Any = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: Optional[float] = None,
    enable_gqa: bool = False,
    *,
    output: Any = None,
    lse: Any = None,
    causal_alignment: str = "top_left",
    window: Optional[Tuple[Optional[int], Optional[int]]] = None,
    key_lengths: Any = None,
    query_lengths: Any = None,
    return_dbias: bool = False,
    return_dscale: bool = False,
    threads: Optional[int] = None,
    softcap: float = 0.0,
    sinks: Any = None,
) -> Tuple[Any, ...]:
    """Gradients of scaled_dot_product_attention: (dq, dk, dv[, dbias][, dscale][, dsinks]).

    grad_output is dL/d(out), shaped like the output. The arguments from query to threads are
    those of the forward call and mean the same. `output` and `lse` are that call's results
    (scaled_dot_product_attention(..., return_lse=True)); when both are None the forward is run
    here first. The backward is exact (FlashAttention-2 recomputation from lse, O(L) memory) and
    bitwise identical for any thread count.

    Returns:
        dq, dk, dv: arrays shaped like query, key and value, in their dtype (float32, float16 or
        bfloat16: computed in float32 and rounded; float32 for mixed inputs; dk and dv summed over the
        query heads of a GQA group); then dbias when return_dbias (the gradient of a float
        attn_mask, shaped like it, summed over its broadcast dimensions), then dscale when
        return_dscale (dL/d(scale), a float), then dsinks when sinks are given (dL/d(sinks),
        float32, shaped like sinks). With a softcap, dbias is the gradient of the capped logit
        and dq, dk, dscale include the factor 1 - tanh^2.

    Raises:
        TypeError / ValueError: as scaled_dot_product_attention; ValueError also when only one of
        output and lse is given, or return_dbias without a float attn_mask.
    """
    call = _Call(query, key, value, attn_mask, dropout_p, is_causal, scale, enable_gqa,
                 causal_alignment, window, key_lengths, query_lengths, threads, softcap, sinks,
                 widen=True)
    if (output is None) != (lse is None):
        raise ValueError("output and lse: give both (the forward's results) or neither")
    if return_dbias and call.mask_shape is None:
        raise ValueError("return_dbias: needs a float attn_mask (an additive bias) to differentiate")
    if output is None:
        b, hq, lq, _ = call.q.shape
        out4 = np.empty((b, hq, lq, call.v.shape[3]), dtype=np.float32)
        lse3 = np.empty((b, hq, lq), dtype=np.float32)
        _core.forward(call.q, call.k, call.v, out4, lse=lse3, **call.options)
    else:
        out4 = call.batched(output, "output", call.out_shape)
        lse3 = call.batched(lse, "lse", call.out_shape[:-1])
    dout4 = call.batched(grad_output, "grad_output", call.out_shape)
    dq = np.empty(call.q.shape, dtype=np.float32)
    dk = np.empty(call.k.shape, dtype=np.float32)
    dv = np.empty(call.v.shape, dtype=np.float32)
    dbias = np.empty(call.options["bias"].shape, dtype=np.float32) if return_dbias else None
    dsinks = None if call.sinks_shape is None else np.empty(call.sinks_shape, dtype=np.float32)
    dscale = _core.backward(call.q, call.k, call.v, out4, dout4, lse3, dq, dk, dv,
                            dbias=dbias, dscale=return_dscale, dsinks=dsinks, **call.options)
    # 16-bit inputs: gradients computed (and summed over broadcast dimensions) in float32, then
    # rounded to the inputs' dtype (the library widens 16-bit inputs for the backward anyway).
    grads: list = [_unbroadcast(call.shaped(g), shape).astype(call.dtype, copy=False)
                   for g, shape in ((dq, call.query.shape), (dk, call.key.shape),
                                    (dv, call.value.shape))]
    if dbias is not None:
        assert call.mask_shape is not None
        if len(call.lead) > 1:  # merged leading dimensions: unmerge before summing
            dbias = dbias.reshape(call.lead + dbias.shape[1:])
        grads.append(_unbroadcast(dbias, call.mask_shape))
    if return_dscale:
        grads.append(float(dscale))
    if dsinks is not None:
        grads.append(dsinks)
    return tuple(grads)


def merge_attention(
    outs: Sequence[Any], lses: Sequence[Any], *, threads: Optional[int] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """Merge attention results computed over disjoint sets of keys into the result over all of them.

    Part i attended to its own keys and gave outs[i] (..., H, L, Ev) and lses[i] (..., H, L) (e.g.
    scaled_dot_product_attention(..., return_lse=True) on one block of keys). The merged result is

        lse = log(sum_i exp(lses[i]))        out = sum_i exp(lses[i] - lse) * outs[i]

    exactly the attention over the union of the keys. A part whose lse is -inf (it saw no key)
    contributes nothing; a row that no part saw gets out = 0, lse = -inf. Computed in float64 in
    part order: the same bits for any thread count.

    Args:
        outs: the parts' outputs, all of one shape (..., H, L, Ev); float32 (float64/float16
            converted), any strides.
        lses: the parts' log-sum-exps, shape (..., H, L).
        threads: OpenMP threads (None: all).

    Returns:
        (out, lse): float32 NumPy arrays of shapes (..., H, L, Ev) and (..., H, L).

    Raises:
        TypeError: an array of an unsupported dtype. ValueError: no parts, len(outs) != len(lses),
            shapes that differ (the message names the part and the dimension).
    """
    outs = [_float32(o, f"outs[{i}]") for i, o in enumerate(outs)]
    lses = [_float32(x, f"lses[{i}]") for i, x in enumerate(lses)]
    if not outs:
        raise ValueError("outs: expected at least one part, got none")
    shape = outs[0].shape
    if len(shape) < 2:
        raise ValueError(f"outs[0].shape = {shape}: expected (..., L, Ev)")
    for i, o in enumerate(outs):
        if o.shape != shape:
            raise ValueError(f"outs[{i}].shape = {o.shape} does not match outs[0].shape = {shape}")
    for i, x in enumerate(lses):
        if x.shape != shape[:-1]:
            raise ValueError(f"lses[{i}].shape = {x.shape}: expected {shape[:-1]} (outs[0].shape "
                             "without its last dimension)")
    out = np.empty(shape, dtype=np.float32)
    lse = np.empty(shape[:-1], dtype=np.float32)

    out4, lse3 = _batched(out, "out"), _batched(lse, "lse", tail=2)  # views: leading dims merged
    _core.merge_attention([_batched(o, f"outs[{i}]") for i, o in enumerate(outs)],
                          [_batched(x, f"lses[{i}]", tail=2) for i, x in enumerate(lses)], out4,
                          lse=lse3, threads=_threads(threads))
    _copy_back(out4, out)
    _copy_back(lse3, lse)
    return out, lse
