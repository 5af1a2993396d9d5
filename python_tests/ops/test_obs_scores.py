"""ops.obs_scores (SPEC §2b) on every backend present, against the float64 oracle (SPEC §4).

Variants are the union of what the per-backend files held before (test_scores_update.py:
float32/float64 F⁻¹; test_triton.py: fp16 weights, with and without pruned weights;
test_cuda.py and test_packed.py: packed storage); a backend that cannot serve a call is
skipped with its own reasons. Float32 scores of fresh float32 weights are held to the oracle
in test_obs_factors.py, next to the same call with return_factors=True (one kernel run
fewer under the Triton interpreter). Under the Triton interpreter (CPU, slow) the packed variant is
not run (Triton reads packed F⁻¹ as the same dense tiles; it runs on a GPU).
"""
import pytest
import torch
from conftest import RTOL, as_storage, assert_scores_match, random_finv, random_pruned, rel_err, shape_for

from obert_kernels import ops, parse_pattern

PATTERNS = ["unstructured", "block4", "2:4", "1:4", "3:8"]
# (F⁻¹ dtype, weight dtype, with already-pruned weights, storage)
VARIANTS = [
    (torch.float32, torch.float32, True, "dense"),
    (torch.float64, torch.float32, True, "dense"),
    (torch.float32, torch.float16, True, "dense"),
    (torch.float32, torch.float16, False, "dense"),
    (torch.float32, torch.float32, True, "packed"),
]
DTYPES = [torch.float32, torch.float64]


def variant_id(v):
    fdtype, wdtype, with_pruned, storage = v
    return f"finv{str(fdtype)[-2:]}-w{str(wdtype)[-2:]}-{'pruned' if with_pruned else 'fresh'}-{storage}"


@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("variant", VARIANTS, ids=variant_id)
def test_scores_match_oracle(seed, backend, small_tiles, pattern, variant):
    fdtype, wdtype, with_pruned, storage = variant
    pat = parse_pattern(pattern)
    d, B = shape_for(pattern)
    finv = random_finv(d, B)
    w = torch.randn(d).to(wdtype)  # fp16 weights are read as they are, scored in F⁻¹'s dtype
    pruned = random_pruned(d, pattern) if with_pruned else None
    dev = backend.device
    f = finv.to(dev, fdtype)
    backend.require("obs_scores", weight=w.to(dev), finv=f, pattern=pat)
    if storage == "packed":
        backend.skip_if_interpreted("Triton reads packed F⁻¹ as dense tiles, which the dense variants test")
    ref = ops.obs_scores_ref(w, finv, pat, pruned)
    out = ops.obs_scores(w.to(dev), as_storage(f, storage), pattern, None if pruned is None else pruned.to(dev),
                         backend=backend.name)
    assert_scores_match(out, ref, fdtype)  # ±∞ exactly where the oracle has them
    finite = torch.isfinite(ref)
    # a score off by one entry of F⁻¹ (the plain diagonal for a group) would fail the bound
    if pat.kind == "block":
        wrong = ops.obs_scores_ref(w, finv, parse_pattern("unstructured")).reshape(-1, pat.group_size).sum(-1)
        assert rel_err(wrong[finite], ref[finite]) > 100 * RTOL[torch.float32]


@pytest.mark.parametrize("dtype", DTYPES)
def test_unstructured_scores_formula(seed, backend, dtype):
    finv = random_finv(50, 10).to(backend.device, dtype)
    w = torch.randn(50, device=backend.device)
    backend.require("obs_scores", weight=w, finv=finv, pattern=parse_pattern("unstructured"))
    expected = w.to(dtype) ** 2 / (2 * finv.diagonal(dim1=1, dim2=2).reshape(-1))
    assert torch.allclose(ops.obs_scores(w, finv, "unstructured", backend=backend.name), expected)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nm_saturated_group_keeps_its_pruned_subset(backend, dtype):
    d, B = 8, 8
    finv = random_finv(d, B).to(backend.device, dtype)
    w = torch.randn(d, device=backend.device)
    backend.require("obs_scores", weight=w, finv=finv, pattern=parse_pattern("2:4"))
    pruned = torch.tensor([True, False, False, True, False, False, False, False], device=backend.device)
    s = ops.obs_scores(w, finv, "2:4", pruned, backend=backend.name)
    subsets = parse_pattern("2:4").subsets
    assert s[0, subsets.index((0, 3))] == float("-inf")
    assert torch.isinf(s[0]).all()  # any other subset would revive a pruned weight
    assert torch.isfinite(s[1]).all()


def test_argument_errors():
    finv = random_finv(40, 10).float()
    w = torch.randn(40)
    with pytest.raises(ValueError, match="update must be"):
        ops.obs_update(w, finv, torch.zeros(40, dtype=torch.bool), "unstructured", "exact")
    with pytest.raises(ValueError, match="weights but finv holds"):
        ops.obs_scores(torch.randn(41), finv)
    with pytest.raises(ValueError, match="divisible by the group size"):
        ops.obs_scores(w, finv, "block4")
    with pytest.raises(TypeError, match="bool"):
        ops.obs_update(w, finv, torch.zeros(40), "unstructured", "obs")
    with pytest.raises(TypeError, match="floating point"):
        ops.obs_scores(torch.ones(40, dtype=torch.int64), finv)
    with pytest.raises(ValueError, match="unknown pattern"):
        ops.obs_scores(w, finv, "block3")
