"""The package's surface: version, stubs that match the extension, docstrings, typing marker."""

from __future__ import annotations

import ast
import inspect
import os

import sdpa
from sdpa import _core


def test_version_is_the_library_version():
    assert sdpa.__version__.count(".") == 2
    assert sdpa.best_isa in ("scalar", "avx2", "avx512")


def test_stubs_name_exactly_the_extension_functions():
    package = os.path.dirname(sdpa.__file__)
    assert os.path.exists(os.path.join(package, "py.typed"))
    tree = ast.parse(open(os.path.join(package, "_core.pyi")).read())
    stubbed = {node.name for node in tree.body if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    exported = {name for name in dir(_core) if not name.startswith("_")
                and (callable(getattr(_core, name)))}
    assert stubbed == exported
    for name in ("forward", "backward"):
        stub = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
        stub_args = [a.arg for a in stub.args.args + stub.args.kwonlyargs]
        signature = getattr(_core, name).__nb_signature__[0][0]
        for arg in stub_args:
            assert f"{arg}:" in signature or f"{arg}=" in signature, (name, arg)


def test_public_functions_have_torch_argument_names_and_docstrings():
    parameters = list(inspect.signature(sdpa.scaled_dot_product_attention).parameters)
    assert parameters[:8] == ["query", "key", "value", "attn_mask", "dropout_p", "is_causal",
                              "scale", "enable_gqa"]
    assert {"causal_alignment", "window", "key_lengths", "query_lengths", "return_lse",
            "return_weights", "threads", "out"} <= set(parameters)
    for function in (sdpa.scaled_dot_product_attention, sdpa.attention_backward):
        assert len(inspect.getdoc(function)) > 500


def test_import_does_not_import_torch():
    import subprocess
    import sys
    code = "import sys, sdpa; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
