# Type stubs of the C++ extension sdpa._core (python/src/module.cpp). Use the sdpa package's
# functions instead: they take torch-style arguments and any array; these take rank-4 views.
from typing import Optional, Sequence, Tuple

import numpy as np
import numpy.typing as npt

__version__: str
best_isa: str

class RunInfo:
    """What a call did: ISA, threads, FLOPs, workspace bytes."""

    @property
    def isa(self) -> str: ...
    @property
    def threads(self) -> int: ...
    @property
    def flops(self) -> float: ...
    @property
    def workspace_bytes(self) -> int: ...

def forward(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    out: npt.NDArray[np.generic],
    *,
    lse: Optional[npt.NDArray[np.float32]] = None,
    weights: Optional[npt.NDArray[np.float32]] = None,
    entropy: Optional[npt.NDArray[np.float32]] = None,
    mask: Optional[npt.NDArray[np.bool_]] = None,
    bias: Optional[npt.NDArray[np.float32]] = None,
    scale: Optional[float] = None,
    causal: str = "none",
    window: Optional[Tuple[int, int]] = None,
    key_lengths: Optional[npt.NDArray[np.int32]] = None,
    query_lengths: Optional[npt.NDArray[np.int32]] = None,
    threads: int = 0,
    isa: str = "auto",
    softcap: float = 0.0,
    sinks: Optional[npt.NDArray[np.float32]] = None,
) -> RunInfo:
    """sdpa::forward on rank-4 views [B, H, L, D] (float32, float16, or bfloat16 as uint16 bit
    patterns; q, k, v of one dtype, out that dtype or float32); writes out (and lse, weights,
    entropy when given). Raises ValueError with the library's message."""

def backward(
    q: npt.ArrayLike,
    k: npt.ArrayLike,
    v: npt.ArrayLike,
    out: npt.ArrayLike,
    dout: npt.ArrayLike,
    lse: npt.ArrayLike,
    dq: npt.NDArray[np.float32],
    dk: npt.NDArray[np.float32],
    dv: npt.NDArray[np.float32],
    *,
    dbias: Optional[npt.NDArray[np.float32]] = None,
    dscale: bool = False,
    dsinks: Optional[npt.NDArray[np.float32]] = None,
    mask: Optional[npt.NDArray[np.bool_]] = None,
    bias: Optional[npt.NDArray[np.float32]] = None,
    scale: Optional[float] = None,
    causal: str = "none",
    window: Optional[Tuple[int, int]] = None,
    key_lengths: Optional[npt.NDArray[np.int32]] = None,
    query_lengths: Optional[npt.NDArray[np.int32]] = None,
    threads: int = 0,
    isa: str = "auto",
    softcap: float = 0.0,
    sinks: Optional[npt.NDArray[np.float32]] = None,
) -> Optional[float]:
    """sdpa::backward: writes dq, dk, dv (and dbias, dsinks when given); returns d(scale) when
    dscale=True, else None."""

def merge_attention(
    outs: Sequence[npt.ArrayLike],
    lses: Sequence[npt.ArrayLike],
    out: npt.NDArray[np.float32],
    *,
    lse: Optional[npt.NDArray[np.float32]] = None,
    threads: int = 0,
) -> None:
    """sdpa::merge_attention: merges partial results (outs[i] [B, H, L, D], lses[i] [B, H, L])
    over disjoint key sets into out (and lse)."""

def data_address(array: npt.ArrayLike) -> int:
    """The data pointer the bindings see for an array (no copy is ever made)."""
