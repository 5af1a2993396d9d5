"""ops.copy_rows, the gradient buffer's one-pass copy, on every kernel present: C++ on the CPU,
Triton on CUDA, and the Triton kernel under the interpreter on the CPU. Each writes exactly what
the pruner's per-tensor torch path writes (every bit: +0.0 where pruned, padding untouched) and
names the first tensor holding a NaN or ±inf, masked or not."""
import pytest
import torch

from obert_kernels import ops
from obert_kernels.ops.backends import cpp


def kernels():
    out = []
    if cpp.available():
        out.append(pytest.param(("cpu", ops.copy_rows), id="cpp"))
    else:
        out.append(pytest.param(None, id="cpp", marks=pytest.mark.skip(reason=cpp.status())))
    try:
        from obert_kernels.ops.backends import triton as triton_backend
        from obert_kernels.ops.backends.triton.rows import copy_rows_triton
    except ImportError as exc:
        return out + [pytest.param(None, id="triton", marks=pytest.mark.skip(reason=str(exc)))]
    if triton_backend.INTERPRETED:  # the kernel itself, on the CPU (ops.copy_rows takes the C++ one there)
        out.append(pytest.param(("cpu", copy_rows_triton), id="triton-interpreter"))
    elif torch.cuda.is_available():
        out.append(pytest.param(("cuda", ops.copy_rows), id="triton-cuda"))
    else:
        out.append(pytest.param(None, id="triton-cuda", marks=pytest.mark.skip(reason="no CUDA device")))
    return out


@pytest.fixture(params=kernels())
def kernel(request):
    return request.param


def rows_reference(buffer, row, sources, keeps, first_blocks):
    """What the pruner's per-tensor path writes: each source into its blocks' row, 0 + g·keep."""
    out = buffer.clone()
    B = buffer.shape[2]
    for src, keep, first in zip(sources, keeps, first_blocks):
        flat = src if keep is None else torch.where(keep, src, torch.zeros((), device=src.device))
        nb = -(-src.numel() // B)
        padded = torch.cat([flat, out[first + nb - 1, row, src.numel() - (nb - 1) * B:]])  # the padding kept
        out[first:first + nb, row] = padded.view(nb, B)
    return out


@pytest.mark.parametrize("B,k", [(1, 1), (5, 3), (8, 2), (32, 32), (50, 7)])
def test_copy_rows_writes_what_the_per_tensor_copy_writes_bit_for_bit(seed, kernel, B, k):
    device, copy = kernel
    sizes = [3 * B + B // 2 + 1, 1, 17, 2 * B]  # partial last blocks, a one-weight tensor, a remainder past 8
    first = [0]
    for n in sizes[:-1]:
        first.append(first[-1] + -(-n // B) + 1)  # a gap of one block between tensors
    nb = first[-1] + -(-sizes[-1] // B) + 1
    buffer = torch.randn(nb, k, B, device=device)
    sources = [torch.randn(n, device=device) for n in sizes]
    keeps = [None, torch.rand(1, device=device) < 0.5, torch.rand(17, device=device) < 0.5,
             torch.rand(2 * B, device=device) < 0.5]
    row = k - 1
    expected = rows_reference(buffer, row, sources, keeps, first)
    assert copy(buffer, row, sources, keeps, first) == -1
    assert torch.equal(buffer.view(torch.int32), expected.view(torch.int32))  # +0.0 where pruned, every bit


@pytest.mark.skipif(not cpp.available(), reason=cpp.status())
@pytest.mark.parametrize("B,k", [(16, 3), (32, 32), (48, 5), (50, 4)])  # 50: rows not whole lines, stored as before
def test_the_cpp_copy_with_streaming_stores_writes_the_same_bits(seed, monkeypatch, B, k):
    """Streaming stores (whole-line rows of a large buffer) bypass the cache: the bits, the refusal
    of a non-finite value and the padding must be what the cached stores give."""
    monkeypatch.setattr(cpp, "STREAM_MIN_BYTES", 0)  # every buffer counts as large
    sizes = [3 * B + 5, 7, 2 * B]
    first = [0, 5, 7]
    buffer = torch.randn(10, k, B)
    assert buffer.data_ptr() % 64 == 0  # torch's CPU allocator: the rows of B % 16 == 0 start cache lines
    sources = [torch.randn(n) for n in sizes]
    keeps = [torch.rand(sizes[0]) < 0.5, None, torch.rand(2 * B) < 0.5]
    expected = rows_reference(buffer, 1, sources, keeps, first)
    assert ops.copy_rows(buffer, 1, sources, keeps, first) == -1
    assert torch.equal(buffer.view(torch.int32), expected.view(torch.int32))
    sources[2][B + 3] = float("nan")
    assert ops.copy_rows(buffer, 0, sources, keeps, first) == 2


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # inf − inf in the interpreter
@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("where", ["vector part", "tail", "pruned"])
def test_copy_rows_names_the_first_tensor_with_a_non_finite_value(seed, kernel, value, where):
    device, copy = kernel
    B, sizes = 50, [120, 333, 64]
    sources = [torch.randn(n, device=device) for n in sizes]
    keeps = [None, torch.ones(333, dtype=torch.bool, device=device), None]
    index = {"vector part": 8, "tail": 332, "pruned": 100}[where]  # 332: past the last multiple of 8 in its block
    sources[1][index] = value
    if where == "pruned":
        keeps[1][index] = False  # refused even where the mask zeroes it, as the per-tensor check does
    sources[2][3] = value
    buffer = torch.zeros(3 + 7 + 2, 4, B, device=device)
    assert copy(buffer, 2, sources, keeps, [0, 3, 10]) == 1
    assert copy(buffer, 2, sources[:1], keeps[:1], [0]) == -1


def test_copy_rows_refuses_bad_arguments_before_writing(kernel):
    device, copy = kernel
    if copy is not ops.copy_rows:
        pytest.skip("the checks are ops.copy_rows's; the interpreted kernel is called directly")
    buffer = torch.zeros(4, 2, 8, device=device)
    src = torch.randn(20, device=device)
    for bad, match in [((buffer, 2, [src], [None], [0]), "row 2"), ((buffer, 0, [src], [None], [2]), "outside"),
                       ((buffer, 0, [src.double()], [None], [0]), "float32"),
                       ((buffer, 0, [src], [torch.ones(20, device=device)], [0]), "bool"),
                       ((buffer, 0, [src], [torch.ones(19, dtype=torch.bool, device=device)], [0]), "keep-mask of 19"),
                       ((buffer[:, :1], 0, [src], [None], [0]), "contiguous")]:
        with pytest.raises(ValueError, match=match):
            ops.copy_rows(*bad)
    assert torch.equal(buffer, torch.zeros(4, 2, 8, device=device))


def test_copy_rows_names_its_backend_per_device():
    assert ops.copy_rows_backend("cpu") == "cpp" and ops.copy_rows_backend("cuda") == "triton"
    assert ops.copy_rows_backend("meta") is None
    assert "no one-pass copy kernel" in " ".join(ops.copy_rows_reasons("meta", [], []))
    try:
        from obert_kernels.ops.backends import triton as triton_backend
    except ImportError:
        return
    if triton_backend.INTERPRETED:  # kernels decorated for the host cannot serve a GPU buffer
        assert "interpreter" in " ".join(ops.copy_rows_reasons("cuda", [], []))
