"""sdpa: exact, fast, memory-efficient scaled dot-product attention on CPU.

    out = softmax(query @ key.T * scale + mask) @ value

scaled_dot_product_attention() takes the arguments of torch.nn.functional.scaled_dot_product_attention
(plus sdpa's own: bottom-right causal alignment, sliding windows, per-sequence lengths, the log-sum-exp
and the weights) and returns a NumPy array; attention_backward() gives the gradients. Inputs are NumPy
arrays or any DLPack-capable CPU array (torch, JAX), read in place when float32, whatever their strides.
The GIL is released while the C++ kernels run. `sdpa.torch` (importable when torch is) wraps both in a
torch.autograd.Function. merge_attention() combines results computed over disjoint key sets (split-KV,
ring attention) exactly, from their log-sum-exps.
"""

from ._attention import attention_backward, merge_attention, scaled_dot_product_attention
from ._core import __version__, best_isa

__all__ = [
    "scaled_dot_product_attention",
    "attention_backward",
    "merge_attention",
    "best_isa",
    "__version__",
]
