"""Packed symmetric F⁻¹ storage (ops/packed.py): layout, every op on it, the pruner option."""
import pytest
import torch
from conftest import RTOL, naive_fp32_error, random_grads, rel_err, spec_tolerance

from obert_kernels import FisherPruner, ops, parse_pattern
from obert_kernels.ops import packed


def random_spd(nb, B, dtype=torch.float64):
    a = torch.randn(nb, B, B, dtype=dtype)
    s = a @ a.transpose(1, 2) + B * torch.eye(B, dtype=dtype)
    return (s + s.transpose(1, 2)) / 2  # exactly symmetric (a batched a·aᵀ need not be)


@pytest.mark.parametrize("B", [1, 2, 7, 50])
def test_pack_unpack_roundtrip_and_layout(seed, B):
    dense = random_spd(3, B)
    p = ops.pack_upper(dense)
    assert p.shape == (3, B * (B + 1) // 2) and packed.packed_block_size(p.shape[1]) == B
    assert torch.equal(ops.unpack_upper(p), dense)
    # row i's entries j ≥ i, rows concatenated: the offset formula the CUDA kernels use
    for i in range(B):
        start = i * (2 * B - i + 1) // 2
        assert torch.equal(p[:, start : start + B - i], dense[:, i, i:])


def test_packed_size_detection():
    assert [packed.packed_block_size(n) for n in (1, 3, 6, 1275)] == [1, 2, 3, 50]
    assert packed.packed_block_size(2) is None and packed.packed_block_size(1274) is None
    with pytest.raises(ValueError, match="not B\\(B\\+1\\)/2"):
        ops.obs_scores(torch.randn(4), torch.ones(1, 2))


def test_init_finv_packed_is_packed_init(seed):
    assert torch.equal(ops.init_finv_packed(4, 9, 0.5), ops.pack_upper(ops.init_finv(4, 9, 0.5)))


@pytest.fixture
def small_tiles(monkeypatch):
    """Force several tiles per call, so the tile-by-tile path is what gets tested."""
    monkeypatch.setattr(packed, "UNPACK_TILE_BYTES", 3 * 13 * 13 * 4)


@pytest.mark.parametrize("method", ["woodbury", "direct"])
@pytest.mark.parametrize("layout", ["rows", "block-major"])
def test_fisher_build_on_packed_storage(seed, small_tiles, method, layout):
    d, B, m, k, damp = 233, 13, 37, 7, 1e-2
    nb = -(-d // B)
    grads = random_grads(m, d)
    ref = ops.fisher_inverse_ref(grads, B, damp)
    fp = ops.init_finv_packed(nb, B, damp) if method == "woodbury" else torch.zeros(nb, B * (B + 1) // 2)
    for start in range(0, m, k):
        chunk = grads[start : start + k]
        if layout == "block-major":
            chunk = torch.nn.functional.pad(chunk, (0, nb * B - d)).view(-1, nb, B).permute(1, 0, 2)
        if method == "woodbury":
            ops.woodbury_update(fp, chunk, m, backend="torch")
        else:
            ops.fisher_accumulate(fp, chunk, m, backend="torch")
    if method == "direct":
        ops.fisher_invert(fp, damp, backend="torch")
    tol = spec_tolerance(naive_fp32_error(grads, B, damp, ref))
    assert rel_err(ops.unpack_upper(fp), ref) <= tol
    assert rel_err(ops.init_finv(nb, B, damp), ref) > 100 * tol


@pytest.mark.parametrize("pattern", ["unstructured", "block4", "2:4"])
def test_scores_and_update_on_packed_equal_dense(seed, small_tiles, pattern):
    d, B = 4 * 59, 12
    finv = ops.fisher_inverse_ref(random_grads(32, d), B, 1e-2).float()
    fp = ops.pack_upper(finv)
    w = torch.randn(d)
    pruned = torch.rand(d) < 0.2
    if parse_pattern(pattern).kind == "block":
        pruned = (torch.rand(d // 4) < 0.2).repeat_interleave(4)
    s_dense = ops.obs_scores(w, finv, pattern, pruned, backend="torch")
    s_packed = ops.obs_scores(w, fp, pattern, pruned, backend="torch")
    assert s_packed.shape == s_dense.shape
    assert torch.equal(s_packed.isfinite(), s_dense.isfinite())
    fin = s_dense.isfinite()
    assert rel_err(s_packed[fin], s_dense[fin]) < RTOL[torch.float32]
    for update in ("obs", "joint", "none"):
        wd, wp = w.clone(), w.clone().reshape(4, -1)  # weights of any shape
        ops.obs_update(wd, finv, pruned, pattern, update, backend="torch")
        ops.obs_update(wp, fp, pruned.reshape(4, -1), pattern, update, backend="torch")
        assert rel_err(wp.reshape(-1), wd) < RTOL[torch.float32]


def test_non_contiguous_weight_update_on_packed(seed, small_tiles):
    d, B = 12 * 20, 12
    finv = ops.fisher_inverse_ref(random_grads(32, d), B, 1e-2).float()
    w = torch.randn(20, 12).t()  # non-contiguous (12, 20)
    mask = torch.rand(12, 20) < 0.3
    expected = w.contiguous().clone()
    ops.obs_update(expected, finv, mask.contiguous(), "unstructured", "obs", backend="torch")
    ops.obs_update(w, ops.pack_upper(finv), mask, "unstructured", "obs", backend="torch")
    assert rel_err(w.contiguous(), expected) < RTOL[torch.float32]


def test_packed_memory_estimate_is_at_most_55_percent():
    sizes = [768 * 768] * 4 + [768 * 3072] * 2
    for B in (32, 50, 100):
        dense = FisherPruner({f"w{i}": torch.zeros(n) for i, n in enumerate(sizes)}, block_size=B, verbose=False,
                             fisher_method="woodbury").memory_estimate()
        packed_est = FisherPruner({f"w{i}": torch.zeros(n) for i, n in enumerate(sizes)}, block_size=B, verbose=False,
                                  fisher_method="woodbury", fisher_storage="packed").memory_estimate()
        ratio = packed_est.fisher_bytes / dense.fisher_bytes
        assert abs(ratio - (B + 1) / (2 * B)) < 1e-9 and ratio <= 0.55
        assert "(packed)" in str(packed_est)


@pytest.mark.parametrize("method", ["woodbury", "direct"])
def test_pruner_packed_matches_dense(seed, method):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(13, 11), torch.nn.ReLU(), torch.nn.Linear(11, 5))
    grads = [[torch.randn_like(p) for p in (model[0].weight, model[2].weight)] for _ in range(24)]
    results = []
    for storage in ("dense", "packed"):
        m = torch.nn.Sequential(torch.nn.Linear(13, 11), torch.nn.ReLU(), torch.nn.Linear(11, 5))
        m.load_state_dict(model.state_dict())
        pr = FisherPruner(m, block_size=10, num_grads=24, damp=1e-2, chunk_size=5, fisher_method=method,
                          fisher_storage=storage, verbose=False, backend="torch")
        for g in grads:
            pr.add_grads(g)
        finv = pr.fisher_inverse("0.weight")
        assert finv.shape == (-(-143 // 10), 10, 10)
        pr.prune(0.6)
        results.append((finv, pr.masks, [p.detach().clone() for p in m.parameters()]))
    (fd, md, pd), (fp, mp, pp) = results
    assert rel_err(fp, fd) < 1e-5
    assert all(torch.equal(md[n], mp[n]) for n in md)
    assert all(rel_err(a, b) < 1e-4 for a, b in zip(pp, pd) if b.norm() > 0)


def test_pruner_rejects_unknown_storage():
    with pytest.raises(ValueError, match="fisher_storage"):
        FisherPruner({"w": torch.zeros(10)}, block_size=5, fisher_storage="triangular", verbose=False)
