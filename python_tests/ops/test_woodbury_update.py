"""ops.woodbury_update (SPEC §2a) on every backend present, against the float64 oracle (SPEC §4).

Cases are the union of what the per-backend files held before (test_woodbury.py,
test_triton.py, test_cuda.py, test_packed.py): every backend runs every case it serves; a
backend that cannot serve a call is skipped with its own reasons. Under the Triton
interpreter (CPU, slow) only the cases the Triton tests always ran there are run.
"""
import pytest
import torch
from conftest import build, naive_fp32_error, random_grads, rel_err, spec_tolerance

from obert_kernels import ops

# (d, B, m, k): d not a multiple of B, B not a power of two, k not dividing m, B > m, B = d,
# one F⁻¹ block per Triton program (B = 64) and several (B ≤ 16), B = 100 for the CUDA kernel,
# B = 13 for test_packed.py's packed build.
SHAPES = [(233, 10, 37, 7), (1000, 50, 64, 16), (97, 13, 29, 29), (130, 64, 20, 3), (50, 50, 5, 1),
          (130, 40, 20, 3), (150, 64, 9, 4), (410, 40, 45, 11), (350, 100, 30, 9), (233, 13, 37, 7)]
# what the Triton tests ran under the interpreter
# tests the Triton interpreter did not run before the backends shared them: kept off it so the
# suite's time does not grow (about 1.7 s each there)
NEW_TO_TRITON = "a torch test before the backends shared it; kept off the interpreter for the suite's time"
INTERPRETER_SHAPES = {(233, 10, 37, 7), (97, 13, 29, 29), (130, 40, 20, 3), (150, 64, 9, 4)}


def require_woodbury(backend, grads, B, dtype=torch.float32):
    nb = -(-grads.shape[1] // B)
    backend.require("woodbury_update", finv=ops.init_finv(nb, B, 1.0, dtype=dtype, device=backend.device), grads=grads)


@pytest.mark.parametrize("shape", SHAPES, ids=[str(s) for s in SHAPES])
@pytest.mark.parametrize("layout", ["rows", "block-major"])
@pytest.mark.parametrize("storage", ["dense", "packed"])
def test_within_spec_tolerance(seed, backend, small_tiles, shape, layout, storage):
    d, B, m, k = shape
    damp = 1e-2
    grads = random_grads(m, d, device=backend.device)
    require_woodbury(backend, grads, B)
    if shape not in INTERPRETER_SHAPES or storage == "packed":
        backend.skip_if_interpreted("the interpreter runs the dense cases of INTERPRETER_SHAPES")
    ref = ops.fisher_inverse_ref(grads, B, damp)
    finv = build("woodbury", grads, B, damp, k, layout, backend=backend.name, storage=storage)
    tol = spec_tolerance(naive_fp32_error(grads, B, damp, ref))
    assert finv.dtype == torch.float32 and finv.shape == ref.shape
    assert rel_err(finv, ref) <= tol
    # the bound is far below what a wrong F⁻¹ scores, so this test can fail
    assert rel_err(ops.init_finv(*ref.shape[:2], damp), ref) > 100 * tol


@pytest.mark.parametrize("d,B,m,k", SHAPES[:3])
def test_float64_matches_oracle_tightly(seed, backend, d, B, m, k):
    grads = random_grads(m, d, dtype=torch.float64, device=backend.device)
    require_woodbury(backend, grads, B, torch.float64)
    ref = ops.fisher_inverse_ref(grads, B, 1e-2)
    assert rel_err(build("woodbury", grads, B, 1e-2, k, backend=backend.name, dtype=torch.float64), ref) < 1e-10


@pytest.mark.parametrize("d,B,m,k", SHAPES[:3])
def test_naive_float64_matches_oracle_tightly(seed, d, B, m, k):
    grads = random_grads(m, d, dtype=torch.float64)
    ref = ops.fisher_inverse_ref(grads, B, 1e-2)
    assert rel_err(build("naive", grads, B, 1e-2, k, dtype=torch.float64), ref) < 1e-10


@pytest.mark.parametrize("d,B,m,k", [(300, 20, 64, 16), (130, 20, 48, 16)])
def test_small_damp_realistic_scale(seed, backend, d, B, m, k):
    """oBERT's damp 1e-7 with gradients ~1e-3 (‖g‖²/λ ≫ m), m > B: still within the rule."""
    grads = random_grads(m, d, scale=1e-3, device=backend.device)
    require_woodbury(backend, grads, B)
    if d != 130:
        backend.skip_if_interpreted("the interpreter runs the d=130 case")
    ref = ops.fisher_inverse_ref(grads, B, 1e-7)
    tol = spec_tolerance(naive_fp32_error(grads, B, 1e-7, ref))
    assert rel_err(build("woodbury", grads, B, 1e-7, k, backend=backend.name), ref) <= tol


def test_strided_and_low_precision_grads(seed, backend):
    """Any strides (a transposed view) and fp16 gradients are read in place, as torch reads them."""
    B, m, d = 12, 9, 70
    grads = random_grads(m, d, device=backend.device)
    require_woodbury(backend, grads, B)
    strided = grads.t().contiguous().t()  # (m, d) with strides (1, m)
    out = ops.woodbury_update(ops.init_finv(6, B, 1e-2, device=backend.device), strided, m, backend=backend.name)
    expect = ops.woodbury_update(ops.init_finv(6, B, 1e-2, device=backend.device), grads, m, backend="torch")
    assert rel_err(out, expect) < 1e-5
    ref = ops.fisher_inverse_ref(grads, B, 1e-2)
    assert rel_err(out, ref) <= spec_tolerance(naive_fp32_error(grads, B, 1e-2, ref))
    half = grads.half()
    out16 = ops.woodbury_update(ops.init_finv(6, B, 1e-2, device=backend.device), half, m, backend=backend.name)
    expect16 = ops.woodbury_update(ops.init_finv(6, B, 1e-2, device=backend.device), half.float(), m, backend="torch")
    assert rel_err(out16, expect16) < 1e-5


def test_zero_gradient_coordinates_stay_decoupled(seed, backend):
    """Pruned weights get zero gradients (SPEC §1): [F⁻¹]_qq = 1/λ and nothing couples them."""
    B, damp = 12, 1e-2
    grads = random_grads(40, 60, device=backend.device)
    require_woodbury(backend, grads, B)
    backend.skip_if_interpreted(NEW_TO_TRITON)
    dead = torch.tensor([0, 5, 13, 59])
    grads[:, dead] = 0
    finv = build("woodbury", grads, B, damp, 8, backend=backend.name).cpu()
    for q in dead.tolist():
        b, i = divmod(q, B)
        row = finv[b, i].clone()
        assert row[i].item() == pytest.approx(1 / damp, rel=1e-6)
        row[i] = 0
        assert torch.all(row.abs() <= 1e-6 * (1 / damp)), row


def test_accepts_low_precision_gradients(seed, backend):
    grads = random_grads(16, 40, device=backend.device)
    require_woodbury(backend, grads, 10)
    backend.skip_if_interpreted("fp16 gradients run under the interpreter in test_strided_and_low_precision_grads")
    ref = build("woodbury", grads, 10, 1e-2, 4, backend=backend.name)
    for dtype in (torch.float16, torch.bfloat16):
        low = grads.to(dtype)
        out = build("woodbury", low, 10, 1e-2, 4, backend=backend.name)
        assert rel_err(out, build("woodbury", low.float(), 10, 1e-2, 4, backend=backend.name)) < 1e-6
        assert rel_err(out, ref) < 5e-2


def test_argument_errors():
    finv = ops.init_finv(3, 10, 1.0)
    with pytest.raises(ValueError, match="does not fill"):
        ops.woodbury_update(finv, torch.randn(2, 20), 4)
    with pytest.raises(ValueError, match="does not fill"):
        ops.woodbury_update(finv, torch.randn(2, 31), 4)
    with pytest.raises(ValueError, match="block-major"):
        ops.woodbury_update(finv, torch.randn(3, 2, 9), 4)
    with pytest.raises(ValueError, match="num_blocks, B, B"):
        ops.woodbury_update(torch.zeros(3, 10, 9), torch.randn(2, 30), 4)
    with pytest.raises(TypeError, match="float32 or float64"):
        ops.woodbury_update(finv.half(), torch.randn(2, 30), 4)
    with pytest.raises(TypeError, match="floating point"):
        ops.woodbury_update(finv, torch.ones(2, 30, dtype=torch.int32), 4)
    with pytest.raises(ValueError, match="num_grads"):
        ops.woodbury_update(finv, torch.randn(2, 30), 0)
    with pytest.raises(ValueError, match="damp"):
        ops.fisher_invert(torch.zeros(3, 10, 10), 0.0)
    with pytest.raises(ValueError, match="damp"):
        ops.fisher_invert(torch.zeros(3, 10, 10), float("nan"))
    assert torch.equal(finv, ops.init_finv(3, 10, 1.0))  # nothing changed
