"""Shared fixtures: a seed per test, the devices and backends present, and SPEC §4's tolerance rule."""
from __future__ import annotations

import os
import random
import signal
from dataclasses import dataclass

import pytest
import torch

# Triton decides between compiling and interpreting when its kernels are decorated, i.e. when
# obert_kernels is first imported (just below): with no CUDA device, the Triton tests run the
# kernels through the interpreter on the CPU. An explicit TRITON_INTERPRET=0 is respected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from obert_kernels import ops, parse_pattern  # noqa: E402
from obert_kernels.ops import packed  # noqa: E402
from obert_kernels.ops.reference import spec_fisher_tolerance  # noqa: E402

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])

# ‖out − ref‖ / ‖ref‖ bounds for ops computed in this dtype from exact inputs
# (scores and updates of a given F⁻¹); the Fisher build uses the SPEC §4 rule below.
RTOL = {torch.float32: 2e-4, torch.float64: 1e-10}


@pytest.fixture
def seed(request) -> int:
    """A fresh seed per test (printed on failure), fixed by OBERT_TEST_SEED to replay one."""
    value = int(os.environ.get("OBERT_TEST_SEED", random.SystemRandom().randrange(2**31)))
    torch.manual_seed(value)
    random.seed(value)
    request.node.user_properties.append(("seed", value))
    print(f"seed={value}")
    return value


@pytest.fixture
def python_sigint():
    """Python's own SIGINT handler for the test: a pytest started as a background job of a
    non-interactive shell inherits SIGINT ignored, and then Python never installs it, so a
    raised SIGINT vanished and the interrupt tests failed whatever the seed (audit, 2026-12-01)."""
    previous = signal.getsignal(signal.SIGINT)
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    if previous == signal.SIG_IGN:
        signal.signal(signal.SIGINT, previous)


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    return ((out - ref).norm() / ref.norm()).item()


def random_grads(m: int, d: int, *, scale: float = 1.0, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Gradients with per-coordinate scales and a shared low-rank part: anisotropic, correlated blocks."""
    col = torch.exp(0.5 * torch.randn(d))
    shared = torch.randn(m, 3) @ torch.randn(3, d)
    return ((torch.randn(m, d) + 0.5 * shared) * col * scale).to(device=device, dtype=dtype)


def assert_scores_match(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype) -> None:
    """Scores computed in ``dtype`` against the float64 oracle's: same shape and dtype, ±∞
    exactly where the oracle has them, the finite ones within RTOL[dtype]."""
    out = out.cpu()
    assert out.shape == ref.shape and out.dtype == dtype
    finite = torch.isfinite(ref)
    assert torch.equal(torch.isfinite(out), finite)
    assert torch.equal(out[~finite], ref[~finite].to(dtype))
    assert rel_err(out[finite], ref[finite]) < RTOL[dtype]


def naive_fp32_error(grads: torch.Tensor, block_size: int, damp: float, ref: torch.Tensor, chunk: int = 7) -> float:
    """Error of the plain per-gradient fp32 update against the float64 reference (SPEC §4)."""
    m, d = grads.shape
    finv = ops.init_finv(-(-d // block_size), block_size, damp, device=grads.device)
    for start in range(0, m, chunk):
        ops.naive_woodbury_update(finv, grads[start : start + chunk].float(), m)
    return rel_err(finv, ref)


def spec_tolerance(naive_err: float) -> float:
    """SPEC §4: no worse than about twice the naive fp32 error (a floor for tiny errors; the reason
    for its size beside the oracle, ``ops.reference.FISHER_ERROR_FLOOR``)."""
    return spec_fisher_tolerance(naive_err)


def random_finv(d, B, dtype=torch.float64):
    """A realistic F⁻¹ from random gradients, in float64: (ceil(d/B), B, B)."""
    return ops.fisher_inverse_ref(random_grads(max(2 * B, 16), d), B, 1e-2).to(dtype)


def shape_for(pattern, block8: int = 24):
    """An awkward (d, B) for a pattern: B not a power of two, d not a multiple of B, groups
    aligned; block8 is B for groups of 8 (the update tests take 40, for larger pruned sets)."""
    g = parse_pattern(pattern).group_size
    return {1: (233, 13), 4: (4 * 59, 12), 8: (8 * 23, block8)}[g]


def random_pruned(d, pattern, frac=0.2):
    """A bool (d,) mask pruning about ``frac``: whole groups for block patterns, single weights otherwise."""
    p = parse_pattern(pattern)
    groups = torch.rand(d // p.group_size) < frac
    if p.kind == "block":  # block4 prunes whole groups
        return groups.repeat_interleave(p.group_size)
    return torch.rand(d) < frac


# ---- backends ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Backend:
    """One backend and the device its tensors live on here.

    name: "torch" | "triton" | "cuda"; device: "cpu" or "cuda". The CUDA backend on a machine
    without a GPU gets "cpu": its calls are built there and its reasons ("no CUDA device ...")
    skip the test.
    """

    name: str
    device: str

    def require(self, op: str, **call) -> None:
        """Skip, with the backend's own reasons, unless it serves ``op`` on this call.

        Give F⁻¹ dense: a backend that does not read packed storage itself gets dense tiles
        (ops/packed.py), and the packed-native CUDA backend's reasons are the same for both.
        """
        reasons = ops.not_supported_reasons(op, self.name, **call)
        if reasons:
            pytest.skip(f"{self.name} cannot run {op} here: " + "; ".join(reasons))

    @property
    def interpreted(self) -> bool:
        """Triton kernels running through the (slow) interpreter on the CPU."""
        return self.name == "triton" and self.device == "cpu"

    def skip_if_interpreted(self, why: str) -> None:
        """Cases the interpreter would take too long for: they run wherever Triton compiles (a GPU)."""
        if self.interpreted:
            pytest.skip(f"triton: not run under the Triton interpreter ({why}); runs compiled on a GPU")


def backend_params(names=("torch", "triton", "cuda", "cpp")) -> list:
    """pytest params of the backends present: torch on the CPU (and CUDA); Triton on CUDA when
    present, else on the CPU through the interpreter (marked ``triton``, for ``-m triton``); CUDA;
    the C++ CPU kernels (cpp, on the CPU)."""
    gpu = torch.cuda.is_available()
    cases = {"torch": [Backend("torch", "cpu")] + ([Backend("torch", "cuda")] if gpu else []),
             "triton": [Backend("triton", "cuda" if gpu else "cpu")],
             "cuda": [Backend("cuda", "cuda" if gpu else "cpu")],
             "cpp": [Backend("cpp", "cpu")]}
    return [pytest.param(b, id=name if name in ("cuda", "cpp") else f"{name}-{b.device}",
                         marks=[pytest.mark.triton] if name == "triton" else [])
            for name in names for b in cases[name]]


BACKENDS = backend_params()
# the kernel backends, for tests that hold them to the torch backend
KERNEL_BACKENDS = backend_params(("triton", "cuda", "cpp"))


@pytest.fixture(params=BACKENDS)
def backend(request) -> Backend:
    return request.param


@pytest.fixture
def small_tiles(monkeypatch):
    """Packed F⁻¹ unpacked three 13×13 float32 blocks at a time, so calls on packed storage go
    through several tiles (ops/packed.py) and the tile-by-tile path is what gets tested."""
    monkeypatch.setattr(packed, "UNPACK_TILE_BYTES", 3 * 13 * 13 * 4)


def as_storage(finv: torch.Tensor, storage: str) -> torch.Tensor:
    """finv (num_blocks, B, B) as stored: "dense" as is, "packed" (num_blocks, B(B+1)/2)."""
    return ops.pack_upper(finv) if storage == "packed" else finv


def block_major(chunk: torch.Tensor, num_blocks: int, B: int) -> torch.Tensor:
    """(k, d) gradients as a block-major (num_blocks, k, B) strided view, as the pruner's buffer slice is."""
    return torch.nn.functional.pad(chunk, (0, num_blocks * B - chunk.shape[1])).view(-1, num_blocks, B).permute(1, 0, 2)


def build(method, grads, B, damp, k, layout="rows", backend="torch", dtype=torch.float32, storage="dense"):
    """F⁻¹ of (m, d) grads in chunks of k: method "woodbury" | "direct" | "naive"; returns it dense."""
    m, d = grads.shape
    nb = -(-d // B)
    if method == "direct":
        finv = as_storage(torch.zeros(nb, B, B, dtype=dtype, device=grads.device), storage)
    else:
        finv = as_storage(ops.init_finv(nb, B, damp, dtype=dtype, device=grads.device), storage)
    for start in range(0, m, k):
        chunk = grads[start : start + k]
        if layout == "block-major":
            chunk = block_major(chunk, nb, B)
        if method == "woodbury":
            ops.woodbury_update(finv, chunk, m, backend=backend)
        elif method == "naive":
            ops.naive_woodbury_update(finv, chunk, m)
        else:
            ops.fisher_accumulate(finv, chunk, m, backend=backend)
    if method == "direct":
        ops.fisher_invert(finv, damp, backend=backend)
    return ops.unpack_upper(finv) if storage == "packed" else finv
