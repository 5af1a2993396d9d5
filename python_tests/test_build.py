"""setup.py's choice of building the CUDA extension (issue 14): by default only where a GPU
driver is present, always with OBERT_KERNELS_BUILD_CUDA=1, never with =0, one line saying why.

setup.py runs ``setup()`` only as __main__ (as pip's build backend and ``python setup.py``
run it), so importing it here builds nothing.
"""
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def setup_module():
    spec = importlib.util.spec_from_file_location("obk_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def never_ask():
    raise AssertionError("the driver probe must not run when OBERT_KERNELS_BUILD_CUDA is set")


def test_forced_on_and_off_never_probe_the_driver(setup_module):
    build, why = setup_module.build_decision("1", driver=never_ask)
    assert build and "OBERT_KERNELS_BUILD_CUDA=1" in why
    build, why = setup_module.build_decision("0", driver=never_ask)
    assert not build and "OBERT_KERNELS_BUILD_CUDA=0" in why


def test_unset_follows_the_driver(setup_module):
    build, why = setup_module.build_decision("", driver=lambda: "/proc/driver/nvidia exists")
    assert build and "/proc/driver/nvidia exists" in why and "OBERT_KERNELS_BUILD_CUDA=0" in why
    build, why = setup_module.build_decision("", driver=lambda: None)
    assert not build and "no GPU driver" in why and "OBERT_KERNELS_BUILD_CUDA=1" in why


def test_a_bad_value_is_refused(setup_module):
    with pytest.raises(SystemExit, match="must be 0, 1 or unset"):
        setup_module.build_decision("yes", driver=never_ask)


def test_the_probe_agrees_with_this_machine(setup_module):
    found = setup_module.gpu_driver()
    has_proc = os.path.exists("/proc/driver/nvidia")
    if has_proc:
        assert found == "/proc/driver/nvidia exists"
    elif found is None:  # nothing of a driver here: no nvidia-smi that runs, no libcuda
        assert not has_proc


def test_setup_py_prints_one_line_saying_why():
    """``python setup.py --name`` (no build) prints the decision line on stderr (unset here,
    or =0 where a driver is present: unset would go on to look for nvcc)."""
    mode = "0" if os.path.exists("/proc/driver/nvidia") else ""
    env = {**os.environ, "OBERT_KERNELS_BUILD_CUDA": mode}
    proc = subprocess.run([sys.executable, "setup.py", "--name"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    said = [line for line in proc.stderr.splitlines() if line.startswith("obert_kernels:")]
    # The CPU extension says a line of its own where pybind11 is missing from this environment
    # (pip builds in an isolated one that has it; a fresh CI machine's does not).
    lines = [line for line in said if "CPU extension" not in line]
    assert len(lines) == 1, proc.stderr
    assert all("pybind11 is not installed" in line for line in said if line not in lines), proc.stderr
    assert ("OBERT_KERNELS_BUILD_CUDA=0" in lines[0]) if mode == "0" else ("GPU driver" in lines[0])


def test_the_cpu_extension_is_built_without_openmp_where_the_compiler_has_none(setup_module, capsys):
    pytest.importorskip("pybind11", reason="cpu_extension() describes the build only where pybind11 imports ([test] installs it)")
    ext = setup_module.cpu_extension()[0]
    assert setup_module.OPENMP_FLAG in ext.extra_compile_args and setup_module.OPENMP_FLAG in ext.extra_link_args
    tried = []

    def build():
        tried.append(list(ext.extra_compile_args))
        if setup_module.OPENMP_FLAG in ext.extra_compile_args:
            raise RuntimeError("clang: error: unsupported option '-fopenmp'")

    assert setup_module.with_openmp_or_without(ext, build) is False
    assert len(tried) == 2 and setup_module.OPENMP_FLAG not in ext.extra_compile_args + ext.extra_link_args
    assert "without OpenMP" in capsys.readouterr().err


def test_a_cpu_build_that_fails_without_openmp_too_raises(setup_module):
    pytest.importorskip("pybind11", reason="cpu_extension() describes the build only where pybind11 imports ([test] installs it)")
    ext = setup_module.cpu_extension()[0]

    def build():
        raise RuntimeError("no compiler")

    with pytest.raises(RuntimeError, match="no compiler"):
        setup_module.with_openmp_or_without(ext, build)
