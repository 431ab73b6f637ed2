#!/usr/bin/env python3
"""sdpa against its peers on the same inputs: PyTorch, ONNX Runtime, OpenVINO, JAX, naive NumPy.

    bench/setup_peers.sh                                  # once: .venv-peers from PyPI
    .venv-peers/bin/python bench/peers.py [--write docs/PEERS.md]

Every library gets the same float32 inputs (converted once, outside the timing, to its own layout),
the same thread count (--threads, default 2), and is timed in interleaved repetitions (one call of
each peer per round, the order rotated every round); the table gives each median and the ratio
peer / sdpa (> 1: sdpa is faster). Forward, and forward + backward where the peer can
differentiate (sdpa, torch, JAX, NumPy by hand); ONNX Runtime and OpenVINO are inference engines.
Every peer's output is checked against sdpa's before it is timed.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

THREADS_DEFAULT = 2


def pin_threads(threads: int) -> None:
    """Thread counts of every runtime, set before any of them is imported."""
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)
    # Interleaved timing needs every runtime to leave the cores alone between calls: OpenBLAS's
    # threads otherwise busy-wait ~2^28 cycles after each call (ONNX Runtime's: see its session).
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    # XLA's CPU client: Eigen's intra-op pool of this many threads.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_cpu_multi_thread_eigen=true"
                               f" intra_op_parallelism_threads={threads}").strip()


@dataclass
class Shape:
    heads: int
    len_q: int
    len_k: int
    dim: int
    causal: bool
    dtype: str = "f32"  # or "bf16": forward only

    def label(self) -> str:
        kind = "causal" if self.causal else "full"
        suffix = " bf16" if self.dtype == "bf16" else ""
        if self.len_q != self.len_k:
            return f"decode Lq={self.len_q} Lk={self.len_k} D={self.dim}{suffix}"
        return f"L={self.len_q} D={self.dim} {kind}{suffix}"


# ---- the peers ------------------------------------------------------------------------------------
# Each prepare(q, k, v, dout, causal, threads) converts the [B, H, L, D] float32 inputs once and
# returns (forward, forward_backward or None, forward output as NumPy for the check).
# The bf16 rows (--dtypes bf16) call PEERS_BF16's preparers instead, with q, k, v already rounded
# to bfloat16 (float32 arrays holding bf16 values): forward only (no forward_backward), each peer in
# its own bf16 mode.

Call = Callable[[], object]


def prepare_sdpa(q, k, v, dout, causal, threads):
    import sdpa

    def forward():
        return sdpa.scaled_dot_product_attention(q, k, v, is_causal=causal, threads=threads)

    def forward_backward():
        out, lse = sdpa.scaled_dot_product_attention(q, k, v, is_causal=causal, threads=threads,
                                                     return_lse=True)
        return sdpa.attention_backward(dout, q, k, v, is_causal=causal, output=out, lse=lse,
                                       threads=threads)

    return forward, forward_backward, forward


def prepare_torch(q, k, v, dout, causal, threads):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    tq, tk, tv, tdout = (torch.from_numpy(a) for a in (q, k, v, dout))
    gq, gk, gv = (t.clone().requires_grad_() for t in (tq, tk, tv))

    def forward():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

    def forward_backward():
        out = F.scaled_dot_product_attention(gq, gk, gv, is_causal=causal)
        return torch.autograd.grad(out, (gq, gk, gv), tdout)

    return forward, forward_backward, lambda: forward().numpy()


def prepare_onnxruntime(q, k, v, dout, causal, threads):
    """com.microsoft MultiHeadAttention (ORT's fused CPU attention) on [B, L, H·D] inputs."""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    batch, heads, len_q, dim = q.shape
    node = helper.make_node("MultiHeadAttention", ["q", "k", "v"], ["out"], domain="com.microsoft",
                            num_heads=heads, unidirectional=int(causal))
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [batch, None, heads * dim])
              for n in ("q", "k", "v")]
    graph = helper.make_graph([node], "mha", inputs,
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No busy-waiting after a call: spinning threads would steal the cores from the next peer.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])

    def blh(a):
        return np.ascontiguousarray(a.transpose(0, 2, 1, 3).reshape(a.shape[0], a.shape[2], -1))

    feeds = {"q": blh(q), "k": blh(k), "v": blh(v)}

    def forward():
        return session.run(None, feeds)[0]

    def output():
        return forward().reshape(batch, len_q, heads, dim).transpose(0, 2, 1, 3)

    return forward, None, output


def prepare_openvino(q, k, v, dout, causal, threads, precision="f32"):
    """OpenVINO's ScaledDotProductAttention op (opset 13), float32 in and out, computing in
    `precision` (INFERENCE_PRECISION_HINT)."""
    import openvino as ov
    import openvino.opset13 as ops

    batch, heads, _, dim = q.shape
    params = [ops.parameter([batch, heads, -1, dim], ov.Type.f32, name=n) for n in ("q", "k", "v")]
    model = ov.Model([ops.scaled_dot_product_attention(*params, causal=causal)], params)
    # The float32 rows ask for f32, not the bf16 OpenVINO would pick by itself on a CPU with
    # AVX512-BF16.
    compiled = ov.Core().compile_model(model, "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                      "INFERENCE_PRECISION_HINT": precision})
    request = compiled.create_infer_request()

    def forward():
        return request.infer([q, k, v], share_inputs=True, share_outputs=True)

    return forward, None, lambda: forward()[0].copy()


def prepare_jax(q, k, v, dout, causal, threads):
    """jax.nn.dot_product_attention (XLA on CPU), jitted; JAX's layout is [B, L, H, D]."""
    import jax
    import jax.numpy as jnp
    import numpy as np

    jq, jk, jv, jdout = (jnp.asarray(a.transpose(0, 2, 1, 3)) for a in (q, k, v, dout))

    def attention(q_, k_, v_):
        return jax.nn.dot_product_attention(q_, k_, v_, is_causal=causal)

    forward_jit = jax.jit(attention)

    @jax.jit
    def vjp(q_, k_, v_, dout_):
        _, pullback = jax.vjp(attention, q_, k_, v_)
        return pullback(dout_)

    def forward():
        return forward_jit(jq, jk, jv).block_until_ready()

    def forward_backward():
        return jax.block_until_ready(vjp(jq, jk, jv, jdout))

    return forward, forward_backward, lambda: np.asarray(forward()).transpose(0, 2, 1, 3)


def prepare_numpy(q, k, v, dout, causal, threads):
    """The straightforward three steps in float32 (OpenBLAS matmuls); the backward by hand."""
    import numpy as np

    len_q, len_k, dim = q.shape[2], k.shape[2], q.shape[3]
    scale = np.float32(1 / np.sqrt(dim))
    hidden = np.triu(np.full((len_q, len_k), -np.inf, np.float32), 1) if causal else None

    def probabilities():
        s = q @ k.swapaxes(-1, -2)
        s *= scale
        if hidden is not None:
            s += hidden
        s -= s.max(axis=-1, keepdims=True)
        np.exp(s, out=s)
        s /= s.sum(axis=-1, keepdims=True)
        return s

    def forward():
        return probabilities() @ v

    def forward_backward():
        p = probabilities()
        out = p @ v
        dv = p.swapaxes(-1, -2) @ dout
        dp = dout @ v.swapaxes(-1, -2)
        dp -= (dout * out).sum(axis=-1, keepdims=True)
        dp *= p  # dS
        dq = (dp @ k) * scale
        dk = (dp.swapaxes(-1, -2) @ q) * scale
        return dq, dk, dv

    return forward, forward_backward, forward


def _bfloat16(a):
    import ml_dtypes  # comes with JAX

    return a.astype(ml_dtypes.bfloat16)


def prepare_sdpa_bf16(q, k, v, dout, causal, threads):
    """ml_dtypes.bfloat16 NumPy arrays in, bfloat16 out (vdpbf16ps on AVX512_BF16)."""
    import sdpa

    bq, bk, bv = (_bfloat16(a) for a in (q, k, v))

    def forward():
        return sdpa.scaled_dot_product_attention(bq, bk, bv, is_causal=causal, threads=threads)

    return forward, None, lambda: forward().astype("float32")


def prepare_torch_bf16(q, k, v, dout, causal, threads):
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    tq, tk, tv = (torch.from_numpy(a).to(torch.bfloat16) for a in (q, k, v))

    def forward():
        with torch.no_grad():
            return F.scaled_dot_product_attention(tq, tk, tv, is_causal=causal)

    return forward, None, lambda: forward().float().numpy()


def prepare_openvino_bf16(q, k, v, dout, causal, threads):
    """OpenVINO's own bf16 mode (AVX512_BF16), float32 in and out as OpenVINO is used (with bf16
    parameters it ran 2x slower here)."""
    return prepare_openvino(q, k, v, dout, causal, threads, precision="bf16")


def prepare_jax_bf16(q, k, v, dout, causal, threads):
    import jax
    import jax.numpy as jnp
    import numpy as np

    jq, jk, jv = (jnp.asarray(a.transpose(0, 2, 1, 3), dtype=jnp.bfloat16) for a in (q, k, v))
    forward_jit = jax.jit(lambda q_, k_, v_: jax.nn.dot_product_attention(q_, k_, v_,
                                                                          is_causal=causal))

    def forward():
        return forward_jit(jq, jk, jv).block_until_ready()

    return forward, None, lambda: np.asarray(forward(), dtype=np.float32).transpose(0, 2, 1, 3)


PEERS_BF16: Dict[str, Callable] = {
    "sdpa": prepare_sdpa_bf16,
    "torch": prepare_torch_bf16,
    "openvino": prepare_openvino_bf16,
    "jax": prepare_jax_bf16,
}
BF16_NOT_RUN = {
    "onnxruntime": "no bf16 on the CPU execution provider (its MultiHeadAttention is float32 only)",
    "numpy": "NumPy has no bfloat16 arithmetic",
}

PEERS: Dict[str, Callable] = {
    "sdpa": prepare_sdpa,
    "torch": prepare_torch,
    "onnxruntime": prepare_onnxruntime,
    "openvino": prepare_openvino,
    "jax": prepare_jax,
    "numpy": prepare_numpy,
}


# ---- timing -----------------------------------------------------------------------------------------


SETTLE_BELOW_S = 0.05


def interleaved_medians(calls: Dict[str, Call], budget_s: float, min_reps: int,
                        max_reps: int) -> Dict[str, float]:
    """Median seconds of each call, timed round-robin (order rotated every round).

    A call shorter than SETTLE_BELOW_S is timed right after an untimed call of the same peer: the
    previous peer's runtime may still have threads spinning on the cores for a while after its own
    call (OpenMP, Eigen and ONNX Runtime pools all do), which cost a 1-3 ms decode call up to a
    third of its time, whichever peer came next. Every peer gets the same treatment.
    """
    names = list(calls)
    first: Dict[str, float] = {}
    for name in names:  # one timed warm round tells how many rounds fit the budget
        start = time.perf_counter()
        calls[name]()
        first[name] = time.perf_counter() - start
    reps = int(max(min_reps, min(max_reps, budget_s / max(sum(first.values()), 1e-9))))
    times: Dict[str, List[float]] = {name: [] for name in names}
    for round_index in range(reps):
        shift = round_index % len(names)
        for name in names[shift:] + names[:shift]:
            if first[name] < SETTLE_BELOW_S:
                calls[name]()
            start = time.perf_counter()
            calls[name]()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def quadratic_gb(shape: Shape, buffers: int) -> float:
    return buffers * shape.heads * shape.len_q * shape.len_k * 4 / 2**30


# Peers that hold whole [H, Lq, Lk] score matrices: how many at once (forward, forward+backward).
QUADRATIC_BUFFERS = {"numpy": (2, 5), "jax": (2, 5)}
SLOW_PEERS = ("numpy", "jax")


def run_shape(shape: Shape, peers: List[str], threads: int, args) -> Tuple[dict, dict, dict]:
    import numpy as np

    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, shape.heads, shape.len_q, shape.dim), dtype=np.float32)
    k = rng.standard_normal((1, shape.heads, shape.len_k, shape.dim), dtype=np.float32)
    v = rng.standard_normal((1, shape.heads, shape.len_k, shape.dim), dtype=np.float32)
    dout = rng.standard_normal(q.shape, dtype=np.float32)
    bf16 = shape.dtype == "bf16"
    if bf16:  # the values every peer gets
        q, k, v = (_bfloat16(a).astype(np.float32) for a in (q, k, v))
    preparers = PEERS_BF16 if bf16 else PEERS
    # Outputs agree within float32 rounding, or two bf16 roundings of outputs of magnitude < 4.
    tolerance = 3e-2 if bf16 else 1e-3
    forward_calls: Dict[str, Call] = {}
    backward_calls: Dict[str, Call] = {}
    notes: Dict[str, str] = {}
    reference = None
    for name in peers:
        if bf16 and name not in PEERS_BF16:
            notes[name] = BF16_NOT_RUN.get(name, "no bf16 variant here")
            continue
        if name in SLOW_PEERS and shape.len_q * shape.len_k > args.slow_max_len**2:
            notes[name] = (f"not run above L = {args.slow_max_len} (--slow-max-len): it forms the "
                           "whole score matrix, 3-10× slower than sdpa at L = 2048 already, and "
                           "one call at L = 8192 takes 10-20 s")
            continue
        buffers = QUADRATIC_BUFFERS.get(name, (0, 0))
        if quadratic_gb(shape, buffers[0]) > args.max_quadratic_gb:
            notes[name] = f"skipped: needs ~{quadratic_gb(shape, buffers[0]):.0f} GB of scores"
            continue
        try:
            forward, forward_backward, output = preparers[name](q, k, v, dout, shape.causal,
                                                                threads)
            result = np.asarray(output(), dtype=np.float32)
        except Exception as error:  # a peer that cannot run this shape is reported, not fatal
            notes[name] = f"failed: {type(error).__name__}: {str(error).splitlines()[0][:100]}"
            continue
        if reference is None:
            reference = result
        difference = float(np.abs(result - reference).max())
        if not difference < tolerance:
            notes[name] = f"wrong result: max|peer - sdpa| = {difference:.2g}"
            continue
        forward_calls[name] = forward
        if forward_backward is not None and not args.forward_only and shape.len_q == shape.len_k:
            if quadratic_gb(shape, buffers[1]) <= args.max_quadratic_gb:
                backward_calls[name] = forward_backward
            else:
                notes.setdefault(name, f"fwd+bwd skipped: needs ~"
                                       f"{quadratic_gb(shape, buffers[1]):.0f} GB of scores")
    budget = args.budget * (shape.len_q * shape.len_k / 2048**2) ** 0.5
    forward_times = interleaved_medians(forward_calls, budget, args.min_reps, args.max_reps)
    backward_times = (interleaved_medians(backward_calls, budget, args.min_reps, args.max_reps)
                      if backward_calls else {})
    return forward_times, backward_times, notes


# ---- report -----------------------------------------------------------------------------------------


def cell(times: Dict[str, float], name: str) -> str:
    if name not in times:
        return "–"
    ms = times[name] * 1e3
    text = f"{ms:.1f}" if ms < 100 else f"{ms:.0f}"
    if name != "sdpa" and "sdpa" in times:
        text += f" ({times[name] / times['sdpa']:.2f}×)"
    return text


def table(rows, peers: List[str]) -> List[str]:
    lines = ["| shape | pass | " + " | ".join(peers) + " | best peer / sdpa | load |",
             "|---|---|" + "---|" * len(peers) + "---|---|"]
    for label, mode, times, load in rows:
        others = [times[p] for p in peers if p != "sdpa" and p in times]
        best = f"{min(others) / times['sdpa']:.2f}×" if others and "sdpa" in times else "–"
        lines.append(f"| {label} | {mode} | " + " | ".join(cell(times, p) for p in peers) +
                     f" | {best} | {load:.1f} |")
    return lines


def wait_for_load(quiet: float, patience_s: float) -> float:
    """Wait (at most patience_s) for the 1-minute load average to drop below `quiet`; return it.

    On a shared machine other jobs inflate every time; ratios of interleaved calls suffer less,
    but a row measured at load 8 on 2 cores is mostly noise, so the table shows the load."""
    deadline = time.monotonic() + patience_s
    while os.getloadavg()[0] >= quiet and time.monotonic() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def machine() -> List[str]:
    model = platform.processor() or "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    flags = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""
    isa = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    load = os.getloadavg()
    return [f"- CPU: {model}, {os.cpu_count()} cores visible, {isa}",
            f"- load average at the end of the run: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; "
            "the table's last column is the 1-minute load around each row (the machine is shared "
            "and has 2 cores: above ~2.5 other jobs take cores from the benchmark, which inflates "
            "every time and makes the ratios noisy)"]


def versions(peers: List[str]) -> str:
    import importlib

    parts = []
    for name in peers:
        try:
            parts.append(f"{name} {importlib.import_module(name).__version__}")
        except Exception:  # noqa: BLE001
            parts.append(f"{name} (not importable)")
    return ", ".join(parts)


def positive_ints(text: str) -> List[int]:
    """A comma-separated list of positive integers ('' = none), for argparse."""
    try:
        values = [int(item) for item in text.split(",") if item]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated integers") from None
    if any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"{text!r}: expected integers >= 1")
    return values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=THREADS_DEFAULT)
    parser.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset")
    parser.add_argument("--lengths", type=positive_ints, default="512,2048,8192",
                        help="'' for the decode rows only")
    parser.add_argument("--dims", type=positive_ints, default="64,128")
    parser.add_argument("--dtypes", default="f32",
                        help="comma-separated: f32 (forward and forward+backward), bf16 (forward)")
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--no-decode", action="store_true", help="skip the Lq=1, Lk=8192 rows")
    parser.add_argument("--forward-only", action="store_true")
    parser.add_argument("--budget", type=float, default=4.0,
                        help="seconds of timed rounds per pass at L=2048 (scaled with L)")
    parser.add_argument("--min-reps", type=int, default=3)
    parser.add_argument("--max-reps", type=int, default=25)
    parser.add_argument("--slow-max-len", type=int, default=2048,
                        help="longest sequence for the peers that form the score matrix (numpy, jax)")
    parser.add_argument("--max-quadratic-gb", type=float, default=6.0,
                        help="skip a peer whose score matrices would need more memory")
    parser.add_argument("--quiet-load", type=float, default=2.5,
                        help="before each shape, wait for the 1-minute load average to drop below")
    parser.add_argument("--quiet-wait", type=float, default=60,
                        help="... but at most this many seconds")
    parser.add_argument("--write", metavar="PATH", help="write the Markdown report here")
    args = parser.parse_args()
    pin_threads(args.threads)
    peers = ["sdpa"] + [p for p in args.peers.split(",") if p and p != "sdpa"]
    lengths = args.lengths
    dtypes = [d for d in args.dtypes.split(",") if d]
    if not dtypes or any(d not in ("f32", "bf16") for d in dtypes):
        parser.error(f"--dtypes {args.dtypes!r}: expected a comma-separated subset of f32,bf16")
    shapes = [Shape(args.heads, length, length, dim, causal, dtype)
              for dtype in dtypes for dim in args.dims for length in lengths
              for causal in (False, True)]
    if not args.no_decode and "f32" in dtypes:
        shapes += [Shape(args.heads, 1, 8192, dim, False) for dim in args.dims]

    started = time.perf_counter()
    rows, all_notes = [], []
    for shape in shapes:
        load = wait_for_load(args.quiet_load, args.quiet_wait)
        forward_times, backward_times, notes = run_shape(shape, peers, args.threads, args)
        load = max(load, os.getloadavg()[0])
        rows.append((shape.label(), "fwd", forward_times, load))
        if backward_times:
            rows.append((shape.label(), "fwd+bwd", backward_times, load))
        for name, note in notes.items():
            all_notes.append(f"- {shape.label()}: {name} {note}")
        print("\n".join(table(rows[-2:] if backward_times else rows[-1:], peers)[2:]), flush=True)
    elapsed = time.perf_counter() - started

    report = table(rows, peers)
    print("\n" + "\n".join(report))
    print("\n".join(all_notes))
    if args.write:
        write_report(args, peers, report, all_notes, elapsed)
    return 0


def write_report(args, peers, report, notes, elapsed) -> None:
    """docs/PEERS.md: the generated part, then whatever follows the notes marker, kept as is."""
    marker = "<!-- notes: text below this line is kept when bench/peers.py rewrites the file -->"
    kept = ""
    if os.path.exists(args.write):
        text = open(args.write).read()
        if marker in text:
            kept = text.split(marker, 1)[1]
    command = "bench/setup_peers.sh && .venv-peers/bin/python bench/peers.py " + " ".join(
        a for a in sys.argv[1:])
    lines = [
        "# sdpa and its peers",
        "",
        "Generated by `bench/peers.py` (the table and the lines above it); the notes below the "
        "marker are written by hand.",
        "",
        "```sh",
        command.strip(),
        "```",
        "",
        *machine(),
        f"- threads: {args.threads} for every library; B = 1, H = {args.heads}, float32"
        + (" (rows marked bf16: bfloat16 inputs, forward only)" if "bf16" in args.dtypes else ""),
        f"- versions: {versions(peers)}",
        f"- run time: {elapsed / 60:.1f} min",
        "",
        "Median milliseconds of interleaved repetitions (in parentheses: time / sdpa's time, so "
        "above 1× sdpa is faster). `fwd+bwd` = forward and the gradients of q, k, v. "
        "– = the peer has no backward (ONNX Runtime and OpenVINO are inference engines) or did "
        "not run (below).",
        "",
        *report,
        "",
        *(["Not run:", "", *notes, ""] if notes else []),
        marker,
    ]
    with open(args.write, "w") as f:
        f.write("\n".join(lines) + kept)


if __name__ == "__main__":
    sys.exit(main())
