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


@pytest.mark.parametrize("B", [1, 2, 7, 32, 50])
def test_the_cpp_conversions_give_the_gathers_bits(seed, B):
    """pack_upper / unpack_upper take the C++ copies for float32 CPU tensors where the extension runs,
    the gathers otherwise (float64, strided views): the same bits either way."""
    from obert_kernels.ops.backends import cpp

    dense = torch.randn(9, B, B)
    dense = dense + dense.mT
    gathered = dense.reshape(9, B * B).index_select(1, packed._indices(B, "cpu")[0])
    assert torch.equal(ops.pack_upper(dense), gathered)
    assert torch.equal(ops.unpack_upper(gathered), dense)
    out = torch.empty(9, B * (B + 1) // 2)
    assert ops.pack_upper(dense, out=out) is out and torch.equal(out, gathered)
    assert torch.equal(ops.pack_upper(dense.double()), gathered.double())  # the gather: float64
    wide = torch.zeros(9, 2 * gathered.shape[1])
    wide[:, ::2] = gathered
    assert torch.equal(ops.unpack_upper(wide[:, ::2]), dense)  # the gather: a strided view
    if not cpp.available():
        pytest.skip(f"the gathers only: {cpp.status()}")
    assert cpp.serves_conversion(dense, out) and not cpp.serves_conversion(dense.double(), out)


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


@pytest.mark.parametrize("damp,method", [("rel:0.01", "direct"), ("rel:0.01:block", "woodbury"), ("auto", "direct"),
                                         ("rel:0.01:tensor", "direct")])
def test_packed_takes_relative_and_auto_damping(seed, damp, method):
    """The relative damps read the diagonal of packed blocks, auto unpacks its sampled blocks: the
    same λ, so the same pruned weights as dense storage (and a Cholesky failure's relative
    fallback reads the packed diagonal too)."""
    torch.manual_seed(seed)
    shapes = {"a": (13, 11), "b": (11, 5)}
    start = {n: torch.randn(*s) for n, s in shapes.items()}
    grads = [{n: torch.randn(*s) * (1e-3 if n == "a" else 1.0) for n, s in shapes.items()} for _ in range(24)]
    results = {}
    for storage in ("dense", "packed"):
        weights = {n: w.clone() for n, w in start.items()}
        pr = FisherPruner(weights, block_size=10, num_grads=24, damp=damp, chunk_size=5, fisher_method=method,
                          fisher_storage=storage, verbose=False)
        for g in grads:
            pr.add_grads(g)
        report = pr.prune(0.6)
        results[storage] = (pr.masks, weights, getattr(pr.damping, "chosen", None), report.sparsity)
    (md, wd, ad, sd), (mp, wp, ap, sp) = results["dense"], results["packed"]
    assert ad == ap and sd == sp
    assert all(torch.equal(md[n], mp[n]) for n in md)
    assert all(rel_err(wp[n], wd[n]) < 1e-4 for n in wd)


@pytest.mark.filterwarnings("ignore:.*relative damp.*:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:Cholesky failed:RuntimeWarning")
def test_packed_failed_cholesky_falls_back_to_a_relative_damp(seed):
    B, m, d = 8, 12, 32
    g = (torch.randn(m, 1) @ torch.randn(1, d)) * 1e5 + torch.randn(m, d) * 1e-3
    w, out = torch.randn(d), {}
    for storage in ("dense", "packed"):
        p = FisherPruner({"w": w.clone()}, block_size=B, num_grads=m, damp=1e-12, verbose=False,
                         fisher_storage=storage)
        for i in range(m):
            p.add_grads([g[i]])
        with pytest.warns(RuntimeWarning, match="relative damp"):
            finv = p.fisher_inverse("w")  # a dense copy, inverted
        with pytest.warns(RuntimeWarning, match="relative damp"):
            p.prune(0.5)  # the state itself, packed, inverted in place
        out[storage] = (finv, p.masks["w"])
    (fd, md), (fp, mp) = out["dense"], out["packed"]
    assert torch.isfinite(fp).all() and rel_err(fp, fd) < 1e-4 and torch.equal(mp, md)


def test_pruner_rejects_unknown_storage():
    with pytest.raises(ValueError, match="fisher_storage"):
        FisherPruner({"w": torch.zeros(10)}, block_size=5, fisher_storage="triangular", verbose=False)


@pytest.mark.parametrize("kw,native", [({}, True), ({"backend": "torch"}, False), ({"fisher_method": "woodbury"}, False)])
def test_auto_storage_is_packed_where_the_build_reads_it_natively(seed, kw, native):
    """fisher_storage="auto" (the default) settles on packed where the direct build's accumulation
    and inversion read packed rows (cpp, on a CPU where it is built), dense elsewhere; and prunes
    what dense storage prunes, to the same bits on cpp (both read the upper triangles). The step's
    report records the storage it used, not "auto"."""
    from obert_kernels.ops.backends import cpp

    expected = "packed" if native and cpp.available() else "dense"
    start = {"a": torch.randn(13, 11), "b": torch.randn(11, 5)}
    grads = [{n: torch.randn_like(w) for n, w in start.items()} for _ in range(16)]
    out = {}
    for storage in ("auto", "dense"):
        weights = {n: w.clone() for n, w in start.items()}
        pr = FisherPruner(weights, block_size=10, num_grads=16, chunk_size=4, damp="rel:0.01", verbose=False,
                          fisher_storage=storage, **kw)
        for g in grads:
            pr.add_grads(g)
        report = pr.prune(0.6)
        method = kw.get("fisher_method", "direct")  # "auto" is direct on a CPU
        assert (report.fisher_storage, report.fisher_method) == (pr.fisher_storage, method)
        assert report.to_dict()["fisher_storage"] == pr.fisher_storage and f"Fisher {method} {pr.fisher_storage}" in str(report)
        out[storage] = (pr.fisher_storage, pr.masks, weights)
    (sa, ma, wa), (sd, md, wd) = out["auto"], out["dense"]
    assert sa == expected and sd == "dense"
    assert all(torch.equal(ma[n], md[n]) for n in md)
    exact = expected == "packed"  # cpp reads dense blocks by their upper triangles too
    assert all(torch.equal(wa[n], wd[n]) if exact else rel_err(wa[n], wd[n]) < 1e-5 for n in wd)


def test_cpu_tiles_are_cache_sized():
    """A packed F⁻¹ on a dense-only kernel is unpacked in tiles of 8 MiB on a CPU (read back from
    the cache: bench/results/packed-tile-cpu-2026-12-08.txt), 64 MiB on other devices."""
    assert packed.tile_bytes("cpu") == 8 * 2**20 and packed.tile_bytes("cuda") == packed.tile_bytes() == 64 * 2**20
    assert packed.tile_blocks(32, 4, "cpu") == 2048 and packed.tile_blocks(32, 4, "cuda") == 16384
    assert [b - a for a, b in packed.tiles(5000, 32, 4, "cpu")] == [2048, 2048, 904]
