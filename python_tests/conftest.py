"""Shared fixtures: a seed per test, the devices present, and SPEC §4's tolerance rule."""
from __future__ import annotations

import os
import random

import pytest
import torch

# Triton decides between compiling and interpreting when its kernels are decorated, i.e. when
# obert_kernels is first imported (just below): with no CUDA device, the Triton tests run the
# kernels through the interpreter on the CPU. An explicit TRITON_INTERPRET=0 is respected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from obert_kernels import ops, parse_pattern  # noqa: E402

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


def naive_fp32_error(grads: torch.Tensor, block_size: int, damp: float, ref: torch.Tensor, chunk: int = 7) -> float:
    """Error of the plain per-gradient fp32 update against the float64 reference (SPEC §4)."""
    m, d = grads.shape
    finv = ops.init_finv(-(-d // block_size), block_size, damp, device=grads.device)
    for start in range(0, m, chunk):
        ops.naive_woodbury_update(finv, grads[start : start + chunk].float(), m)
    return rel_err(finv, ref)


def spec_tolerance(naive_err: float) -> float:
    """SPEC §4: no worse than about twice the naive fp32 error (a float32-eps floor for exact cases)."""
    return 2.0 * naive_err + 1e-6


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
