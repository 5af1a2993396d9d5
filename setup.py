"""Build script. The package is pure Python; csrc/ holds two optional extensions.

The CPU extension (obert_kernels._cpu, csrc/cpu/: the direct Fisher build's kernels, ~15 s of
g++) is built wherever a C++17 compiler works; without it the torch backend serves the CPU:

    OBERT_KERNELS_BUILD_CPU=1    build it, and fail loudly if it cannot be built (CI)
    OBERT_KERNELS_BUILD_CPU=0    never build it
    (unset)                      try, and say so on stderr if it could not be built

The extension (obert_kernels._C) is built by default only where a GPU driver is present
(/proc/driver/nvidia exists, ``nvidia-smi -L`` runs, or libcuda loads) and nvcc and the CUDA
runtime (headers and libcudart_static) are found: compiling it takes ~90 s of CPU, wasted on
a machine that cannot run it. One line on stderr says which and why (pip shows it with -v):

    OBERT_KERNELS_BUILD_CUDA=1   build it (no driver needed: CI), and fail loudly if it cannot be built
    OBERT_KERNELS_BUILD_CUDA=0   never build it
    (unset)                      build it when a GPU driver, nvcc and the runtime are found
    OBERT_KERNELS_CUDA_ARCHS     compute capabilities to compile for (default "80;90")
    OBERT_KERNELS_NVCC_THREADS   nvcc --threads (default: the number of CPUs)

nvcc is taken from $CUDA_HOME/bin, then PATH; the runtime from where nvcc says it lives.
The binding takes raw device pointers, so neither torch nor its headers are needed at
build time (csrc/README.md).
"""
from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"
CU_SOURCES = ["woodbury.cu", "scores.cu", "update.cu", "sequential.cu"]
MODE = os.environ.get("OBERT_KERNELS_BUILD_CUDA", "").strip()
CPU_MODE = os.environ.get("OBERT_KERNELS_BUILD_CPU", "").strip()


def say(msg: str) -> None:
    print(f"obert_kernels: {msg}", file=sys.stderr, flush=True)


def gpu_driver() -> str | None:
    """How a GPU driver shows itself here, or None: /proc/driver/nvidia, a working
    ``nvidia-smi -L``, or a loadable libcuda (the driver's library; WSL has no /proc entry)."""
    if Path("/proc/driver/nvidia").exists():
        return "/proc/driver/nvidia exists"
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            if subprocess.run([smi, "-L"], capture_output=True, timeout=30).returncode == 0:
                return f"{smi} -L runs"
        except (OSError, subprocess.SubprocessError):
            pass
    for name in ("libcuda.so.1", "nvcuda.dll"):
        try:
            ctypes.CDLL(name)
            return f"{name} loads"
        except OSError:
            pass
    return None


def build_decision(mode: str, driver=gpu_driver) -> tuple[bool, str]:
    """(build the CUDA extension?, the line that says why) for OBERT_KERNELS_BUILD_CUDA=``mode``;
    driver() -> how a GPU driver was found, or None (asked only when ``mode`` is unset)."""
    if mode == "0":
        return False, "OBERT_KERNELS_BUILD_CUDA=0: not building the CUDA extension"
    if mode == "1":
        return True, "OBERT_KERNELS_BUILD_CUDA=1: building the CUDA extension (an error if it cannot be built)"
    if mode:
        raise SystemExit(f"obert_kernels: OBERT_KERNELS_BUILD_CUDA must be 0, 1 or unset, got {mode!r}")
    found = driver()
    if found:
        return True, f"GPU driver found ({found}): building the CUDA extension (OBERT_KERNELS_BUILD_CUDA=0 skips it)"
    return False, ("no GPU driver found (no /proc/driver/nvidia, nvidia-smi or libcuda): not building the CUDA "
                   "extension; the torch/Triton backends work without it (OBERT_KERNELS_BUILD_CUDA=1 builds it anyway)")


def find_nvcc() -> str | None:
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    if home and (Path(home) / "bin" / "nvcc").exists():
        return str(Path(home) / "bin" / "nvcc")
    return shutil.which("nvcc")


def cuda_paths(nvcc: str) -> tuple[Path, Path] | None:
    """(include dir, lib dir) of the toolkit nvcc belongs to, asked of nvcc itself (the
    nvcc on PATH may be a wrapper script far from the toolkit)."""
    try:
        out = subprocess.run([nvcc, "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60).stderr
    except (OSError, subprocess.SubprocessError):
        return None
    top = re.search(r"^#\$ TOP=(.*)$", out, re.M)
    target = re.search(r"^#\$ _TARGET_DIR_=(.+)$", out, re.M)
    if not top:
        return None
    base = Path(top.group(1).strip()).resolve()
    for root in ([base / target.group(1).strip()] if target else []) + [base]:
        inc, libs = root / "include", [root / "lib", root / "lib64"]
        for lib in libs:
            if (inc / "cuda_runtime.h").exists() and (lib / "libcudart_static.a").exists():
                return inc, lib
    return None


def archs() -> list[str]:
    return [a.strip() for a in os.environ.get("OBERT_KERNELS_CUDA_ARCHS", "80;90").replace(",", ";").split(";") if a.strip()]


OPENMP_FLAG = "-fopenmp"


def with_openmp_or_without(ext, build) -> bool:
    """build() the CPU extension with OpenMP (its kernels then run on torch's OpenMP threads); where
    the compiler has none (clang without libomp), again without it (threads of their own).
    Returns whether OpenMP is in."""
    try:
        build()
        return OPENMP_FLAG in ext.extra_compile_args
    except Exception as exc:
        if OPENMP_FLAG not in ext.extra_compile_args:
            raise
        say(f"CPU extension: the build with {OPENMP_FLAG} failed ({type(exc).__name__}: {exc}); "
            "building it without OpenMP (its kernels then start threads of their own)")
        ext.extra_compile_args = [a for a in ext.extra_compile_args if a != OPENMP_FLAG]
        ext.extra_link_args = [a for a in ext.extra_link_args if a != OPENMP_FLAG]
        build()
        return False


class BuildCudaExt(build_ext):
    """Compiles csrc/*.cu with nvcc (in parallel), then links them with the pybind11 binding."""

    def build_extension(self, ext):
        if ext.name == "obert_kernels._cpu":
            return self._build_cpu(ext)
        if ext.name != "obert_kernels._C":
            return super().build_extension(ext)
        seconds = self._optional("CUDA", MODE, "the torch/Triton backends still work", lambda: self._link_cuda(ext))
        if seconds is not None:
            say(f"built the CUDA extension for sm_{', sm_'.join(archs())} in {seconds:.0f} s")

    def _link_cuda(self, ext):
        objects = self._compile_cuda(ext)
        ext.extra_objects = objects + list(ext.extra_objects or [])
        super().build_extension(ext)

    def _build_cpu(self, ext):
        build = lambda: super(BuildCudaExt, self).build_extension(ext)  # noqa: E731
        seconds = self._optional("CPU", CPU_MODE, "the torch backend serves the CPU",
                                 lambda: with_openmp_or_without(ext, build))
        if seconds is not None:
            say(f"built the CPU extension in {seconds:.0f} s")

    @staticmethod
    def _optional(kind: str, mode: str, fallback: str, build) -> float | None:
        """Run build(); the seconds it took, or None when it failed and ``mode`` is not "1"
        (OBERT_KERNELS_BUILD_<kind>=1 makes a failure an error), after one line saying so."""
        start = time.perf_counter()
        try:
            build()
        except Exception as exc:
            if mode == "1":
                raise
            say(f"{kind} extension not built ({type(exc).__name__}: {exc}); {fallback}. "
                f"Set OBERT_KERNELS_BUILD_{kind}=1 to make this an error.")
            return None
        return time.perf_counter() - start

    def _compile_cuda(self, ext) -> list[str]:
        nvcc = ext._obk_nvcc
        out_dir = Path(self.build_temp) / "obk_cuda"
        out_dir.mkdir(parents=True, exist_ok=True)
        gencode = []
        for a in archs():
            gencode += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        threads = os.environ.get("OBERT_KERNELS_NVCC_THREADS", str(os.cpu_count() or 1))
        flags = ["-std=c++17", "-O3", "-Xcompiler", "-fPIC", "--threads", threads, *gencode]

        def compile_one(name: str) -> str:
            obj = out_dir / (name + ".o")
            cmd = [nvcc, *flags, "-c", str(CSRC / name), "-o", str(obj)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                raise RuntimeError(f"nvcc failed on {name}:\n{' '.join(cmd)}\n{proc.stdout}{proc.stderr}")
            return str(obj)

        with ThreadPoolExecutor(max_workers=min(len(CU_SOURCES), int(threads))) as pool:
            return list(pool.map(compile_one, CU_SOURCES))


def cuda_extension() -> list[Extension]:
    build, why = build_decision(MODE)
    say(why)
    if not build:
        return []
    nvcc = find_nvcc()
    paths = cuda_paths(nvcc) if nvcc else None
    if paths is None:
        why = "nvcc not found (set CUDA_HOME or put nvcc on PATH)" if not nvcc else f"no CUDA runtime (cuda_runtime.h, libcudart_static.a) next to {nvcc}"
        if MODE == "1":
            raise SystemExit(f"obert_kernels: OBERT_KERNELS_BUILD_CUDA=1 but {why}")
        say(f"{why}: skipping the optional CUDA extension (torch/Triton backends only)")
        return []
    try:
        import pybind11
    except ImportError:
        if MODE == "1":
            raise
        say("pybind11 is not installed: skipping the optional CUDA extension")
        return []
    inc, lib = paths
    ext = Extension(
        "obert_kernels._C",
        sources=[str((CSRC / "bindings.cpp").relative_to(ROOT))],
        depends=[str(p.relative_to(ROOT)) for p in sorted(CSRC.glob("*")) if p.suffix in (".cu", ".cuh", ".h")],
        include_dirs=[pybind11.get_include(), str(CSRC)],
        library_dirs=[str(lib)],
        # the static runtime: no libcudart.so to find at import time, whatever torch ships
        libraries=["cudart_static", "dl", "pthread", "rt"],
        define_macros=[("OBK_CUDA_ARCHS", '"' + ",".join(f"sm_{a}" for a in archs()) + '"')],
        extra_compile_args=["-std=c++17", "-O2"],
        language="c++",
    )
    ext._obk_nvcc = nvcc
    say(f"building the CUDA extension with {nvcc} ({inc.parent}) for sm_{', sm_'.join(archs())}")
    return [ext]


def cpu_extension() -> list[Extension]:
    """The CPU kernels' extension (csrc/cpu/), unless OBERT_KERNELS_BUILD_CPU=0."""
    if CPU_MODE not in ("", "0", "1"):
        raise SystemExit(f"obert_kernels: OBERT_KERNELS_BUILD_CPU must be 0, 1 or unset, got {CPU_MODE!r}")
    if CPU_MODE == "0":
        say("OBERT_KERNELS_BUILD_CPU=0: not building the CPU extension")
        return []
    try:
        import pybind11
    except ImportError:
        if CPU_MODE == "1":
            raise
        say("pybind11 is not installed: skipping the optional CPU extension")
        return []
    source = CSRC / "cpu" / "fisher_cpu.cpp"
    return [Extension(
        "obert_kernels._cpu",
        sources=[str(source.relative_to(ROOT))],
        include_dirs=[pybind11.get_include()],
        # the kernels' AVX2/FMA code is enabled per function (a GCC pragma in the source) and
        # runs only after the CPU says it has them: no -march here
        # OpenMP: the kernels run on torch's own threads (ops/backends/cpp: use_openmp); a
        # compiler without it builds the module without (with_openmp_or_without)
        extra_compile_args=["-std=c++17", "-O3", "-pthread", OPENMP_FLAG],
        extra_link_args=["-pthread", OPENMP_FLAG],
        language="c++",
    )]


if __name__ == "__main__":  # pip's build backend and ``python setup.py`` run it as __main__; tests import it
    setup(ext_modules=cpu_extension() + cuda_extension(), cmdclass={"build_ext": BuildCudaExt})
