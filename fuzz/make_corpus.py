#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/ (committed; rerun only to
change them). fuzz_npy: small .npy files as numpy writes them (every dtype and version, both byte
orders, Fortran order, rank 0 and empty arrays) plus a few broken ones. fuzz_forward and
fuzz_backward: pseudo-random byte strings (fixed seed) of several lengths; the decoder turns any
bytes into a call, so these only give libFuzzer different starting sizes. The other fuzz_forward /
fuzz_backward seeds (named after what they decode to: 16-bit inputs, softcap, sinks) were picked
from fuzz runs with SDPA_FUZZ_PRINT=1 (docs/RELIABILITY.md); this script leaves them alone."""
import io
import pathlib
import random

import numpy as np

root = pathlib.Path(__file__).resolve().parent / "corpus"


def npy_bytes(array, version=None):
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, version=version)
    return buffer.getvalue()


def npy_seeds():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3)).astype(np.float32)
    seeds = {
        "f4_c.npy": npy_bytes(x),
        "f4_fortran.npy": npy_bytes(np.asfortranarray(x)),
        "f8_big_v2.npy": npy_bytes(x.astype(">f8"), version=(2, 0)),
        "f2_v3.npy": npy_bytes(x.astype(np.float16), version=(3, 0)),
        "bool.npy": npy_bytes(np.array([[True, False, True]])),
        "i4.npy": npy_bytes(np.arange(4, dtype=np.int32)),
        "i8_big.npy": npy_bytes(np.arange(3, dtype=">i8")),
        "u2.npy": npy_bytes(np.arange(3, dtype="<u2")),
        "v2.npy": npy_bytes(np.zeros(2, dtype="V2")),
        "rank0.npy": npy_bytes(np.float32(1.5).reshape(())),
        "empty.npy": npy_bytes(np.zeros((0, 4), dtype=np.float32)),
        "rank4.npy": npy_bytes(rng.standard_normal((1, 2, 1, 2)).astype(np.float32)),
    }
    good = seeds["f4_c.npy"]
    seeds["truncated.npy"] = good[:-3]
    seeds["trailing.npy"] = good + b"\0"
    seeds["bad_header.npy"] = good[:10] + good[10:].replace(b"'shape'", b"'shapf'")
    return seeds


def api_seeds(seed):
    rng = random.Random(seed)
    return {f"random_{n:04d}": rng.randbytes(n) for n in (16, 64, 160, 400, 1000, 2500, 6000)}


def write(target, seeds):
    directory = root / target
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in seeds.items():
        (directory / name).write_bytes(data)


write("fuzz_npy", npy_seeds())
write("fuzz_forward", api_seeds(1))
write("fuzz_backward", api_seeds(2))
