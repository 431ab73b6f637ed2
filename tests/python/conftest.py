"""Shared helpers of the Python tests: random inputs, the accuracy rule, case descriptions."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import reference  # noqa: E402


def assert_accurate(fast, ref64, naive32, what: str, slack: float = 1e-6) -> None:
    """The accuracy rule: max|fast - ref64| <= 2 * max|naive32 - ref64| + slack (inf-aware)."""
    fast, ref64, naive32 = (np.asarray(x, dtype=np.float64) for x in (fast, ref64, naive32))
    assert fast.shape == ref64.shape, f"{what}: shape {fast.shape} != reference {ref64.shape}"
    same_inf = np.isinf(ref64)
    assert np.array_equal(np.isinf(fast), same_inf), f"{what}: infinities differ from the reference"
    assert np.array_equal(fast[same_inf], ref64[same_inf]), f"{what}: infinities differ in sign"
    assert not np.isnan(fast).any(), f"{what}: NaN"
    finite = ~same_inf
    if not finite.any():
        return
    error = np.abs(fast[finite] - ref64[finite]).max()
    baseline = np.abs(naive32[finite] - ref64[finite]).max()
    assert error <= 2 * baseline + slack, (
        f"{what}: max error {error:.3g} > 2 * naive32 error {baseline:.3g} + {slack:g}")


@dataclass
class Case:
    """One forward/backward call: shapes and the public function's keyword arguments."""

    name: str
    b: int = 2
    hq: int = 4
    hkv: int = 4
    lq: int = 37
    lk: int = 53
    dk: int = 40
    dv: int = 24
    kwargs: Dict[str, Any] = field(default_factory=dict)
    mask: Optional[str] = None  # "bool" | "bias" | None
    mask_shape: Optional[Tuple[int, ...]] = None  # default: (lq, lk)

    def inputs(self, seed: int = 0):
        rng = np.random.default_rng(seed)
        q = rng.standard_normal((self.b, self.hq, self.lq, self.dk), dtype=np.float32)
        k = rng.standard_normal((self.b, self.hkv, self.lk, self.dk), dtype=np.float32)
        v = rng.standard_normal((self.b, self.hkv, self.lk, self.dv), dtype=np.float32)
        kwargs = dict(self.kwargs)
        shape = self.mask_shape or (self.lq, self.lk)
        if self.mask == "bool":
            kwargs["attn_mask"] = rng.random(shape) < 0.7
        elif self.mask == "bias":
            bias = rng.standard_normal(shape).astype(np.float32)
            bias[rng.random(shape) < 0.2] = -np.inf
            kwargs["attn_mask"] = bias
        return q, k, v, kwargs


def reference_options(kwargs: Dict[str, Any]) -> reference.Options:
    """The reference's description of a call of the public function with these arguments."""
    mask = kwargs.get("attn_mask")
    window = kwargs.get("window")
    causal = "none"
    if kwargs.get("is_causal"):
        causal = kwargs.get("causal_alignment", "top_left")
    return reference.Options(
        mask=mask if mask is not None and mask.dtype == np.bool_ else None,
        bias=mask if mask is not None and mask.dtype != np.bool_ else None,
        scale=kwargs.get("scale"),
        causal=causal,
        window=None if window is None else tuple(-1 if s is None else s for s in window),
        key_lengths=kwargs.get("key_lengths"),
        query_lengths=kwargs.get("query_lengths"),
    )


CASES = [
    Case("plain"),
    Case("scale", kwargs={"scale": 0.37}),
    Case("causal_top_left_short_queries", kwargs={"is_causal": True}),
    Case("causal_top_left_long_queries", lq=61, lk=29, kwargs={"is_causal": True}),
    Case("causal_bottom_right", kwargs={"is_causal": True, "causal_alignment": "bottom_right"}),
    Case("causal_bottom_right_long_queries", lq=61, lk=29,
         kwargs={"is_causal": True, "causal_alignment": "bottom_right"}),
    Case("window", kwargs={"window": (5, 3)}),
    Case("window_left_only", kwargs={"window": (7, None)}),
    Case("window_causal_bottom_right",
         kwargs={"window": (9, 0), "is_causal": True, "causal_alignment": "bottom_right"}),
    Case("bool_mask_2d", mask="bool"),
    Case("bool_mask_full", mask="bool", mask_shape=(2, 4, 37, 53)),
    Case("bias_broadcast_heads_keys", mask="bias", mask_shape=(1, 4, 1, 53)),
    Case("bias_full", mask="bias", mask_shape=(2, 4, 37, 53)),
    Case("key_lengths", kwargs={"key_lengths": np.array([53, 11])}),
    Case("query_lengths", kwargs={"query_lengths": np.array([5, 37])}),
    Case("lengths_zero", kwargs={"key_lengths": np.array([0, 20]), "query_lengths": [37, 0]}),
    Case("gqa", hq=6, hkv=2, kwargs={"enable_gqa": True}),
    Case("mqa_without_enable_gqa", hq=4, hkv=1),
    Case("dk_equals_dv_64", dk=64, dv=64),
    Case("one_key", lk=1),
    Case("one_query", lq=1, lk=300),
    Case("everything", hq=6, hkv=3, mask="bias", mask_shape=(2, 1, 37, 53),
         kwargs={"enable_gqa": True, "is_causal": True, "causal_alignment": "bottom_right",
                 "window": (20, None), "key_lengths": np.array([40, 53]),
                 "query_lengths": np.array([37, 30]), "scale": 0.2}),
    Case("everything_bool_mask", hq=4, hkv=2, mask="bool",
         kwargs={"enable_gqa": True, "is_causal": True, "window": (6, 2),
                 "key_lengths": np.array([50, 17])}),
]


@pytest.fixture(params=CASES, ids=[c.name for c in CASES])
def case(request) -> Case:
    return request.param
