"""The direct path of SPEC §2a: ops.fisher_accumulate then ops.fisher_invert, on every backend
present, against the float64 oracle (SPEC §4).

The direct path stores C = Σ g gᵀ/m in float32, so its error grows with cond(F): it is held
to the rule where m ≥ B (well-conditioned F). Under the Triton interpreter (CPU, slow) only
the cases the Triton tests always ran there are run.
"""
import pytest
import torch
from conftest import build, naive_fp32_error, random_grads, rel_err, spec_tolerance

from obert_kernels import ops

# (d, B, m, k) with m ≥ B: d not a multiple of B, B not a power of two, k not dividing m
SHAPES = [(233, 10, 37, 7), (1000, 50, 64, 16), (97, 13, 29, 29), (130, 40, 45, 16), (233, 13, 37, 7)]
INTERPRETER_SHAPES = {(233, 10, 37, 7), (97, 13, 29, 29), (130, 40, 45, 16)}


def require_direct(backend, grads, B, dtype=torch.float32):
    nb = -(-grads.shape[1] // B)
    fisher = torch.zeros(nb, B, B, dtype=dtype, device=backend.device)
    backend.require("fisher_accumulate", finv=fisher, grads=grads)
    backend.require("fisher_invert", finv=fisher)


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("layout", ["rows", "block-major"])
@pytest.mark.parametrize("storage", ["dense", "packed"])
def test_within_spec_tolerance(seed, backend, small_tiles, shape, layout, storage):
    d, B, m, k = shape
    damp = 1e-2
    grads = random_grads(m, d, device=backend.device)
    require_direct(backend, grads, B)
    if shape not in INTERPRETER_SHAPES or storage == "packed":
        backend.skip_if_interpreted("the interpreter runs the dense cases of INTERPRETER_SHAPES")
    ref = ops.fisher_inverse_ref(grads, B, damp)
    finv = build("direct", grads, B, damp, k, layout, backend=backend.name, storage=storage)
    tol = spec_tolerance(naive_fp32_error(grads, B, damp, ref))
    assert finv.dtype == torch.float32 and finv.shape == ref.shape
    assert rel_err(finv, ref) <= tol
    assert rel_err(ops.init_finv(*ref.shape[:2], damp), ref) > 100 * tol  # a wrong F⁻¹ fails
    if storage == "dense":
        assert torch.equal(finv, finv.transpose(1, 2))  # symmetrised by the inversion


@pytest.mark.parametrize("d,B,m,k", [(233, 10, 37, 7), (1000, 50, 64, 16), (97, 13, 29, 29)])
def test_float64_matches_oracle_tightly(seed, backend, d, B, m, k):
    grads = random_grads(m, d, dtype=torch.float64, device=backend.device)
    require_direct(backend, grads, B, torch.float64)
    ref = ops.fisher_inverse_ref(grads, B, 1e-2)
    assert rel_err(build("direct", grads, B, 1e-2, k, backend=backend.name, dtype=torch.float64), ref) < 1e-10


def test_small_damp_realistic_scale(seed, backend):
    """oBERT's damp 1e-7 with gradients ~1e-3, m > B: still within the rule."""
    B, m, d = 20, 64, 300
    grads = random_grads(m, d, scale=1e-3, device=backend.device)
    require_direct(backend, grads, B)
    backend.skip_if_interpreted("the small-damp direct case is a torch case; the interpreter runs Woodbury's")
    ref = ops.fisher_inverse_ref(grads, B, 1e-7)
    tol = spec_tolerance(naive_fp32_error(grads, B, 1e-7, ref))
    assert rel_err(build("direct", grads, B, 1e-7, 16, backend=backend.name), ref) <= tol


def test_zero_gradient_coordinates_stay_decoupled(seed, backend):
    """Pruned weights get zero gradients (SPEC §1): [F⁻¹]_qq = 1/λ and nothing couples them."""
    B, damp = 12, 1e-2
    grads = random_grads(40, 60, device=backend.device)
    require_direct(backend, grads, B)
    backend.skip_if_interpreted("a torch test before the backends shared it; kept off the interpreter for the suite's time")
    dead = torch.tensor([0, 5, 13, 59])
    grads[:, dead] = 0
    finv = build("direct", grads, B, damp, 8, backend=backend.name).cpu()
    for q in dead.tolist():
        b, i = divmod(q, B)
        row = finv[b, i].clone()
        assert row[i].item() == pytest.approx(1 / damp, rel=1e-6)
        row[i] = 0
        assert torch.all(row.abs() <= 1e-6 * (1 / damp)), row


def test_accumulate_matches_oracle(seed, backend):
    """fisher += Σ g gᵀ / m onto a non-zero fisher, m ≠ k, d not a multiple of B."""
    fisher = torch.rand(5, 11, 11, device=backend.device)
    grads = random_grads(19, 53, device=backend.device)
    backend.require("fisher_accumulate", finv=fisher, grads=grads)
    g = torch.nn.functional.pad(grads.double().cpu(), (0, 5 * 11 - 53)).view(19, 5, 11).permute(1, 0, 2)
    ref = fisher.double().cpu() + g.transpose(1, 2) @ g / 40
    expect = ops.fisher_accumulate(fisher.clone(), grads, 40, backend="torch")
    ops.fisher_accumulate(fisher, grads, 40, backend=backend.name)
    assert rel_err(fisher, expect) < 1e-6
    assert rel_err(fisher, ref) < 1e-6


def test_invert_retries_an_indefinite_block_with_a_warning(backend):
    fisher = torch.zeros(3, 5, 5, device=backend.device)
    backend.require("fisher_invert", finv=fisher)
    fisher[1] = -torch.eye(5) * 1e-3  # not positive definite at damp 1e-4
    with pytest.warns(RuntimeWarning, match="retried"):
        ops.fisher_invert(fisher, 1e-4, backend=backend.name)
    assert torch.isfinite(fisher).all()
    assert torch.allclose(fisher[0], torch.eye(5, device=backend.device) * 1e4)
    assert torch.allclose(fisher[2], torch.eye(5, device=backend.device) * 1e4)


def test_invert_gives_up_on_nan(backend):
    fisher = torch.full((1, 3, 3), float("nan"), device=backend.device)
    backend.require("fisher_invert", finv=fisher)
    with pytest.raises(FloatingPointError, match="non-finite"):
        ops.fisher_invert(fisher, 1e-3, backend=backend.name)


def test_invert_gives_up_after_retries(backend):
    fisher = -torch.eye(3, device=backend.device).expand(1, 3, 3) * 1e9
    backend.require("fisher_invert", finv=fisher)
    with pytest.warns(RuntimeWarning), pytest.raises(FloatingPointError, match="not positive definite"):
        ops.fisher_invert(fisher.clone(), 1e-3, backend=backend.name)
