"""Packed symmetric F⁻¹ storage (ops/packed.py): the layout and the pruner option.

Every op on packed storage is tested with the dense one, on every backend, in python_tests/ops/
(the ``storage`` parameter; through several tiles by conftest.small_tiles)."""
import pytest
import torch
from conftest import rel_err

from obert_kernels import FisherPruner, ops
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


@pytest.mark.parametrize("method,backend", [("woodbury", "torch"), ("direct", "torch"), ("direct", "auto")])
def test_pruner_packed_matches_dense(seed, method, backend):
    """auto: the cpp backend (where built) adds the chunks to the packed upper triangles itself,
    in one write; torch gets them tile by tile."""
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(13, 11), torch.nn.ReLU(), torch.nn.Linear(11, 5))
    grads = [[torch.randn_like(p) for p in (model[0].weight, model[2].weight)] for _ in range(24)]
    results = []
    for storage in ("dense", "packed"):
        m = torch.nn.Sequential(torch.nn.Linear(13, 11), torch.nn.ReLU(), torch.nn.Linear(11, 5))
        m.load_state_dict(model.state_dict())
        pr = FisherPruner(m, block_size=10, num_grads=24, damp=1e-2, chunk_size=5, fisher_method=method,
                          fisher_storage=storage, verbose=False, backend=backend)
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
