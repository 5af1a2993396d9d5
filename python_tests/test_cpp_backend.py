"""The C++ CPU kernels (backend "cpp", csrc/cpu/) beyond what the shared op tests check: their
threading and remainders, exact symmetry, accuracy against torch's LAPACK path, the failed-block
hand-off, and that CI really built them (OBERT_KERNELS_BUILD_CPU=1)."""
import os
import sys
import types
import warnings

import pytest
import torch
from conftest import random_grads

from obert_kernels import ops
from obert_kernels.ops.blocks import mirror_upper_torch
from obert_kernels.ops.backends import cpp

pytestmark = pytest.mark.skipif(not cpp.available(), reason=cpp.status())


def rel_err(x, ref):
    return ((x.double() - ref).norm() / ref.norm()).item()


@pytest.fixture(params=[(1, True), (3, True), (3, False)], ids=["1", "3-openmp", "3-own"])
def threads(request):
    """The kernels split blocks over torch.get_num_threads() threads (one, and more than blocks/4),
    on torch's OpenMP threads where this process allows it, and on threads of their own."""
    n, openmp = request.param
    before, before_openmp = torch.get_num_threads(), cpp.threads() == "torch's OpenMP threads"
    torch.set_num_threads(n)
    cpp.use_openmp(openmp)
    yield n
    torch.set_num_threads(before)
    cpp.use_openmp(before_openmp)


@pytest.fixture(params=["avx2", "avx512"])
def isa(request):
    """The accumulation's Gram tiles: AVX2, and AVX-512 where this CPU has it (skipped elsewhere)."""
    if request.param not in cpp.isas():
        pytest.skip(f"this CPU runs the tiles with {cpp.isas()} only")
    before = cpp.use_isa(request.param)
    yield request.param
    cpp.use_isa(before)


def test_ci_built_the_extension():
    if os.environ.get("OBERT_KERNELS_BUILD_CPU") != "1":
        pytest.skip("OBERT_KERNELS_BUILD_CPU is not 1: the build may have skipped the extension")
    assert cpp.extension is not None and "ready" in cpp.status()


def test_a_module_built_from_older_sources_is_refused_with_a_reason():
    assert cpp.stale_reason(cpp.extension) == ""  # the one built from these sources
    for built in (types.SimpleNamespace(), types.SimpleNamespace(ABI=cpp.ABI - 1)):  # before ABI existed; older
        assert "predates csrc/cpu/fisher_cpu.cpp" in cpp.stale_reason(built) and "rebuild" in cpp.stale_reason(built)


def test_the_kernels_take_torchs_openmp_threads_only_where_the_runtime_is_torchs(monkeypatch):
    on = cpp.use_openmp()
    try:
        assert on == cpp.SHARES_TORCH_OPENMP == (bool(cpp.extension.openmp_built())
                                                 and cpp.extension.openmp_symbol() == cpp.torch_openmp_symbol())
        assert cpp.threads() in cpp.status()
        assert not cpp.use_openmp(False) and cpp.threads() == "their own"
        monkeypatch.setattr(cpp, "SHARES_TORCH_OPENMP", False)  # another runtime: never its threads
        assert not cpp.use_openmp(True) and cpp.threads() == "their own"
    finally:
        monkeypatch.undo()
        cpp.use_openmp(on)
    if os.environ.get("OBERT_KERNELS_BUILD_CPU") == "1" and sys.platform == "linux":
        assert on, "CI builds with OpenMP, and torch's Linux wheel brings libgomp.so.1, which the module must share"


def test_both_kinds_of_threads_give_the_same_bits(seed):
    nb, k, B = 23, 9, 13
    chunk = random_grads(k, nb * B).view(k, nb, B).transpose(0, 1).contiguous()
    start = torch.rand(nb, B, B)
    start = start @ start.mT  # positive semi-definite: with λ = 0.5 every block is the C++ kernel's (no torch retry)
    sources = [torch.randn(40), torch.randn(19 * B - 1)]  # blocks 0-3 and 4-22, each with padding
    out = {}
    on, before = cpp.use_openmp(), torch.get_num_threads()
    torch.set_num_threads(2)  # both kinds split the blocks in two
    try:
        for openmp in (True, False):
            cpp.use_openmp(openmp)
            fisher, buffer = start.clone(), torch.zeros(nb, k, B)
            ops.fisher_accumulate(fisher, chunk, 7, backend="cpp")
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a failed block would be retried by torch, with a warning
                ops.fisher_invert(fisher, 0.5, backend="cpp")
            assert ops.copy_rows(buffer, 4, sources, [None, None], [0, 4]) == -1
            out[openmp] = (fisher, buffer)
    finally:
        cpp.use_openmp(on)
        torch.set_num_threads(before)
    assert all(torch.equal(a, b) for a, b in zip(out[True], out[False]))


@pytest.mark.parametrize("B", [1, 7, 8, 9, 15, 16, 17, 24, 25, 31, 32, 40, 48, 50, 60, 64, 71, 100])
def test_every_kernel_gives_the_same_bits(seed, B):
    """Every entry is the same chain of fused multiply-adds over the chunk's rows and the same final
    FMA in every accumulation kernel: the padded tiles of full blocks and the in-place upper-triangle
    kernels, each in AVX2 and (where the CPU has it) AVX-512. Block sizes cover each tile shape: 8/16-
    wide, one or two vector columns, padding rows; no tail, 1-7 and 9-15 tail rows, blocks under 8
    and 16; dense blocks and packed upper triangles. The chunk is a strided view (rows nb·B floats
    apart)."""
    nb, k = 5, int(torch.randint(1, 40, ()).item())
    chunk = random_grads(k, nb * B).view(k, nb, B).transpose(0, 1)
    start = torch.rand(nb, B, B)
    upper = torch.ones(B, B, dtype=torch.bool).triu()
    before, out, packed = cpp.isa(), {}, {}
    try:
        for name in cpp.isas() + ["auto"]:
            cpp.use_isa(name)
            for upper_only in (False, True):
                out[name, upper_only] = start.clone()
                ops.fisher_accumulate(out[name, upper_only], chunk, 3, backend="cpp", upper_only=upper_only)
            packed[name] = ops.pack_upper(start)
            ops.fisher_accumulate(packed[name], chunk, 3, backend="cpp")
    finally:
        cpp.use_isa(before)
    full = out["avx2", False]
    assert not torch.equal(full[:, upper], start[:, upper]) and (B == 1 or not torch.equal(full[:, ~upper], start[:, ~upper]))
    for (name, upper_only), result in out.items():
        assert torch.equal(result[:, upper], full[:, upper]), (name, upper_only, k)
        assert torch.equal(result[:, ~upper], (start if upper_only else full)[:, ~upper]), (name, upper_only, k)
    for name, result in packed.items():  # the upper triangles, read and written as packed rows
        assert torch.equal(result, ops.pack_upper(full)), (name, "packed", k)


def test_use_isa_refuses_what_this_cpu_lacks():
    with pytest.raises(ValueError, match="not 'sse'"):
        cpp.use_isa("sse")
    default = "auto" if "avx512" in cpp.isas() else "avx2"
    assert cpp.isa() == default and f"accumulation: {default}" in cpp.status()
    before = cpp.use_isa("avx2")
    try:
        assert before == default and cpp.isa() == "avx2"
        cpp.use_isa("auto")
        assert cpp.isa() == default
    finally:
        cpp.use_isa(before)
    if "avx512" not in cpp.isas():
        with pytest.raises(ValueError, match="not 'avx512'"):
            cpp.use_isa("avx512")


@pytest.mark.parametrize("B,k", [(1, 1), (7, 3), (13, 5), (32, 32), (50, 17)])
def test_accumulate_is_exactly_symmetric_and_matches_float64(seed, threads, isa, B, k):
    nb, filled = 9, max(1, k - 2)
    buffer = random_grads(k, nb * B).view(k, nb, B).transpose(0, 1).contiguous()  # (nb, k, B), like the pruner's
    chunk = buffer[:, :filled]  # rows [0, filled) of a k-row buffer: block stride k·B, not filled·B
    fisher = torch.rand(nb, B, B)
    fisher = fisher + fisher.transpose(1, 2)
    ref = fisher.double() + chunk.double().transpose(1, 2) @ chunk.double() / 40
    ops.fisher_accumulate(fisher, chunk, 40, backend="cpp")
    assert torch.equal(fisher, fisher.transpose(1, 2))
    assert rel_err(fisher, ref) < 1e-6


@pytest.mark.parametrize("B", [1, 2, 7, 32, 50, 71])
def test_mirror_upper_cpp_copies_as_torch_does(seed, threads, B):
    """The C++ mirror and torch's give the same bits (both copy); the upper triangles stay as they
    were; what the C++ kernel cannot serve (float64, a strided view) goes to torch's, same result."""
    blocks = torch.randn(13, B, B)
    out = cpp.mirror_upper_cpp(blocks.clone())
    assert torch.equal(out, mirror_upper_torch(blocks.clone()))
    upper = torch.ones(B, B, dtype=torch.bool).triu()
    assert torch.equal(out[:, upper], blocks[:, upper]) and torch.equal(out, out.mT)
    assert not cpp.mirror_upper_reasons(blocks)
    strided = torch.randn(13, B, 2 * B)[:, :, :B]
    for other in (blocks.double(), strided):
        assert cpp.mirror_upper_reasons(other)
        torch.testing.assert_close(ops.mirror_upper(other.clone()), mirror_upper_torch(other.clone()), rtol=0, atol=0)


@pytest.mark.parametrize("B", [5, 32, 50])
def test_upper_only_adds_to_the_upper_triangles_and_mirror_completes_them(seed, threads, isa, B):
    nb, k = 7, 6
    chunk = random_grads(k, nb * B).view(k, nb, B).transpose(0, 1)
    start = torch.rand(nb, B, B)
    ref = start.double() + chunk.double().transpose(1, 2) @ chunk.double() / 11
    fisher = start.clone()
    ops.fisher_accumulate(fisher, chunk, 11, backend="cpp", upper_only=True)
    upper = torch.ones(B, B, dtype=torch.bool).triu()
    assert torch.equal(fisher[:, ~upper], start[:, ~upper])  # the strict lower triangles untouched
    assert rel_err(fisher[:, upper], ref[:, upper]) < 1e-6
    ops.mirror_upper(fisher)
    assert torch.equal(fisher, fisher.transpose(1, 2)) and rel_err(fisher, ref.triu() + ref.triu(1).mT) < 1e-6
    both = start.clone()
    ops.fisher_accumulate(both, chunk, 11, backend="torch", upper_only=True)  # torch writes both anyway
    assert rel_err(both, ref) < 1e-6


@pytest.mark.parametrize("nb,B", [(1, 3), (5, 8), (11, 50), (6, 33)])
def test_invert_is_as_accurate_as_torch_at_least(seed, threads, nb, B):
    grads = random_grads(2 * B, nb * B, scale=1e-3)
    fisher = torch.zeros(nb, B, B)
    ops.fisher_accumulate(fisher, grads, 2 * B, backend="torch")
    damp = 1e-7
    ref = torch.linalg.inv(fisher.double() + damp * torch.eye(B, dtype=torch.float64))
    ours, theirs = fisher.clone(), fisher.clone()
    ops.fisher_invert(ours, damp, backend="cpp")
    ops.fisher_invert(theirs, damp, backend="torch")
    assert torch.equal(ours, ours.transpose(1, 2))
    assert rel_err(ours, ref) <= rel_err(theirs, ref) * 1.01 + 1e-7
    packed = ops.pack_upper(fisher)  # read and written as packed rows: the same bits
    assert ops.resolve_backend("fisher_invert", "cpp", packed) == "cpp"
    ops.fisher_invert(packed, damp, backend="cpp")
    assert torch.equal(packed, ops.pack_upper(ours))


@pytest.mark.parametrize("nb,B", [(5, 8), (6, 33)])
def test_dense_blocks_are_inverted_from_their_upper_triangles(seed, threads, nb, B):
    # a dense F need not be symmetric to the last bit (torch's batched GEMM left B = 33 and 50
    # blocks asymmetric on an AMD EPYC): the inverse is the packed form's, whatever the lower one holds
    grads = random_grads(2 * B, nb * B, scale=1e-3)
    fisher = torch.zeros(nb, B, B)
    ops.fisher_accumulate(fisher, grads, 2 * B, backend="cpp", upper_only=True)  # lower triangles stay 0
    upper = fisher.triu()
    fisher = upper + torch.nextafter(upper, torch.tensor(1.0)).triu(1).transpose(1, 2)  # lower: one ulp up
    packed = ops.pack_upper(fisher)
    ops.fisher_invert(fisher, 1e-7, backend="cpp")
    ops.fisher_invert(packed, 1e-7, backend="cpp")
    assert torch.equal(fisher, fisher.transpose(1, 2))
    assert torch.equal(ops.pack_upper(fisher), packed)


def test_a_failed_block_is_retried_alone(threads):
    fisher = torch.eye(6).repeat(9, 1, 1)
    fisher[5] = -torch.eye(6)  # not positive definite at damp 1e-3: the torch retry takes it
    with pytest.warns(RuntimeWarning, match="1 Fisher block"):
        ops.fisher_invert(fisher, 1e-3, backend="cpp")
    for b in range(9):
        if b != 5:
            assert torch.allclose(fisher[b], torch.eye(6) / (1 + 1e-3))
    assert torch.isfinite(fisher[5]).all() and torch.linalg.eigvalsh(fisher[5]).min() > 0
    packed = torch.eye(6).repeat(9, 1, 1)
    packed[5] = -torch.eye(6)
    packed = ops.pack_upper(packed)
    with pytest.warns(RuntimeWarning, match="1 Fisher block"):
        ops.fisher_invert(packed, 1e-3, backend="cpp")
    assert torch.equal(packed, ops.pack_upper(fisher))


def test_auto_takes_cpp_for_float32_on_the_cpu_and_torch_for_float64():
    grads = torch.zeros(2, 4, 5)
    assert ops.resolve_backend("fisher_accumulate", "auto", torch.zeros(2, 5, 5), grads=grads) == "cpp"
    assert ops.resolve_backend("fisher_invert", "auto", torch.zeros(2, 5, 5)) == "cpp"
    f64 = torch.zeros(2, 5, 5, dtype=torch.float64)
    assert ops.resolve_backend("fisher_invert", "auto", f64) == "torch"
    assert "float32 only" in ops.not_supported_reasons("fisher_invert", "cpp", finv=f64)[0]
    assert "no obs_scores" in ops.not_supported_reasons("obs_scores", "cpp", finv=torch.zeros(2, 5, 5))[0]
