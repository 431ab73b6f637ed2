#!/usr/bin/env bash
# Creates .venv-peers (a virtual environment separate from the test one) with the libraries that
# bench/peers.py compares sdpa against, all from PyPI, plus sdpa itself built from this checkout.
# Never used by the tests. The installs are large: torch from PyPI brings its CUDA libraries
# (about 3 GB) even though only its CPU path is used.
# Usage: bench/setup_peers.sh        then: .venv-peers/bin/python bench/peers.py
# Environment: PEERS_VENV (default .venv-peers), PYTHON (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${PEERS_VENV:-.venv-peers}"
[[ -x "$venv/bin/python" ]] || "${PYTHON:-python3}" -m venv "$venv"
pip=("$venv/bin/python" -m pip install --quiet --disable-pip-version-check)
"${pip[@]}" --upgrade pip
"${pip[@]}" numpy onnx onnxruntime openvino "jax[cpu]" torch
# sdpa itself, built by scikit-build-core from the same CMake project as the C++ library.
"${pip[@]}" . --config-settings=build-dir=build-python/peers
"$venv/bin/python" - <<'PY'
import importlib
for name in ("numpy", "torch", "onnxruntime", "openvino", "jax", "sdpa"):
    try:
        module = importlib.import_module(name)
        print(f"setup_peers: {name} {getattr(module, '__version__', '?')}")
    except Exception as error:  # report every peer, even when one failed
        print(f"setup_peers: {name} unavailable: {error}")
PY
