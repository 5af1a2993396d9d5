"""The command line refuses a bad flag before importing torch (issue 14), and the lazy
``obert_kernels`` package still gives every public name.

The torch checks run in a fresh interpreter (this one has torch loaded already): it imports the
package or runs the CLI's ``main`` on bad arguments and reports whether ``torch`` reached
``sys.modules``. The CLI rows are test_bad_inputs.py's, so every refusal the README lists
is covered: those whose check needs torch (``NEEDS_TORCH``: a device, a backend on a device,
the pruner's configuration) are refused after torch's import (test_bad_inputs.py asserts
that, before any model loads); all others without importing it.
"""
from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest

import obert_kernels
from test_bad_inputs import CLI_CASES, NO_CUDA, ONE_SENTENCE

ROOT = Path(obert_kernels.__file__).resolve().parents[1]
# the CLI rows whose check needs torch: refused after torch's import, still before a model loads
NEEDS_TORCH = ("is not a device", "--backend cuda on cpu")


def _python(code: str, *argv: str):
    """Run ``code`` in a fresh interpreter (this checkout first on the path); its last stdout line is JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_import_does_not_import_torch():
    out = _python("import json, sys, obert_kernels, obert_kernels.app.cli, obert_kernels.app.options, "
                  "obert_kernels.core.arguments, obert_kernels.specs\n"
                  "print(json.dumps({'torch': 'torch' in sys.modules, 'all': obert_kernels.__all__}))")
    assert out["torch"] is False
    assert out["all"] == obert_kernels.__all__


def test_every_public_name_resolves():
    """Every name in ``__all__``, by attribute, ``from ... import`` and ``*``, is the object its
    module defines (in this interpreter: the names load on first use whatever loaded torch)."""
    for name in obert_kernels.__all__:
        value = getattr(obert_kernels, name)
        namespace = {}
        exec(f"from obert_kernels import {name}", namespace)
        assert namespace[name] is value, name
        if name != "ops":
            assert getattr(importlib.import_module(value.__module__), name) is value, name
    star = {}
    exec("from obert_kernels import *", star)
    assert set(obert_kernels.__all__) <= set(star) and set(obert_kernels.__all__) <= set(dir(obert_kernels))
    assert isinstance(obert_kernels.ops, types.ModuleType) and obert_kernels.ops.__name__ == "obert_kernels.ops"
    assert obert_kernels.Pattern is obert_kernels.ops.Pattern is obert_kernels.ops.patterns.Pattern


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no attribute 'FisherPrunr'"):
        obert_kernels.FisherPrunr  # noqa: B018
    assert not hasattr(obert_kernels, "_not_a_name")


def _needs_torch(case) -> bool:
    """A row only torch can refuse: NEEDS_TORCH, and "no CUDA device" where a GPU driver shows
    (without one, specs.check_cuda_driver refuses it before torch)."""
    return any(fragment in case.match for fragment in NEEDS_TORCH) or (case.needs == NO_CUDA and _gpu_driver_here())


def _gpu_driver_here() -> bool:
    from obert_kernels.specs import check_cuda_driver

    try:
        check_cuda_driver("--device", "cuda")
    except ValueError:
        return False
    return True


def test_needs_torch_names_real_rows():
    """Each NEEDS_TORCH fragment matches a row, so the list cannot excuse a row that is gone."""
    assert all(any(f in c.match for c in CLI_CASES) for f in NEEDS_TORCH)


def test_cli_rows_refuse_before_importing_torch(tmp_path):
    """Every CLI row of the bad-input table whose check needs no torch: exit 2 with its message,
    and torch still not imported after it. One interpreter runs them in turn, checking after
    each row, so the first row that imported torch is the one named."""
    (tmp_path / ONE_SENTENCE).write_text("One sentence is all this file holds.\n")
    rows = [c for c in CLI_CASES if not _needs_torch(c)]
    argvs = []
    for case in rows:
        argv = [str(tmp_path / a) if a == ONE_SENTENCE else a for a in case.argv]
        argvs.append(argv + (["--out", str(tmp_path / "out"), "--no-progress"] if argv[0] == "prune" else []))
    script = (
        "import contextlib, io, json, sys\n"
        "from obert_kernels.app.cli import main\n"
        "results = []\n"
        "for argv in json.loads(sys.argv[1]):\n"
        "    err = io.StringIO()\n"
        "    with contextlib.redirect_stderr(err):\n"
        "        try:\n"
        "            code = main(argv)\n"
        "        except SystemExit as exc:\n"
        "            code = exc.code\n"
        "    results.append({'code': code, 'err': err.getvalue(), 'torch': 'torch' in sys.modules})\n"
        "print(json.dumps(results))")
    results = _python(script, json.dumps(argvs))
    assert len(rows) >= 20 and len(results) == len(rows)
    for case, out in zip(rows, results):
        assert out["code"] == 2 and case.match in out["err"], (case.shown, out)
        assert out["torch"] is False, f"{case.shown}: torch was imported before the refusal"
    assert not (tmp_path / "out").exists()
