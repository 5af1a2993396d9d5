"""Selection (SPEC §3): select_lowest against a stable argsort, on every device present."""
from __future__ import annotations

import pytest
import torch

from obert_kernels.core import selection, sequential_select


def argsort_reference(scores: torch.Tensor, count: int) -> torch.Tensor:
    """The first ``count`` of a stable argsort on the host: the contract select_lowest keeps."""
    flat = scores.reshape(-1).cpu()
    mask = torch.zeros(flat.numel(), dtype=torch.bool)
    mask[torch.argsort(flat, stable=True)[:count]] = True
    return mask.reshape(scores.shape)


def scores_with_ties(n: int, kind: str) -> torch.Tensor:
    """Fresh scores: distinct, few distinct values (many ties), signed zeros and ±inf mixed in."""
    if kind == "distinct":
        return torch.rand(n)
    if kind == "ties":
        return torch.randint(0, 5, (n,)).float()
    s = torch.randint(-2, 3, (n,)).float() * torch.rand(()).item()  # zeros of both signs below
    s[torch.rand(n) < 0.2] = -0.0
    s[torch.rand(n) < 0.1] = float("inf")
    s[torch.rand(n) < 0.05] = float("-inf")
    if kind == "with-nan":
        s[torch.rand(n) < 0.3] = float("nan")  # a sort puts them last
    return s


@pytest.mark.parametrize("kind", ["distinct", "ties", "zeros-and-infs", "with-nan"])
@pytest.mark.parametrize("n", [1, 7, 1000, 4099])
def test_select_lowest_is_a_stable_argsort_prefix(seed, device, kind, n):
    scores = scores_with_ties(n, kind).to(device)
    for count in sorted({0, 1, n // 3, n // 2, n - 1, n}):
        got = selection.select_lowest(scores, count)
        assert got.device == scores.device and got.dtype == torch.bool and int(got.sum()) == count
        assert torch.equal(got.cpu(), argsort_reference(scores, count)), (kind, n, count)


@pytest.mark.parametrize("way", [selection.lowest_by_kth, selection.lowest_by_sort], ids=lambda f: f.__name__)
def test_both_ways_agree_on_every_device(seed, device, way):  # select_lowest picks one per device type
    scores = scores_with_ties(3001, "with-nan").to(device)
    for count in (1, 1000, 3000):
        assert torch.equal(way(scores, count).cpu(), argsort_reference(scores, count))


def test_select_lowest_keeps_the_shape(seed, device):
    scores = torch.randint(0, 3, (13, 6)).float().to(device)
    got = selection.select_lowest(scores, 40)
    assert got.shape == scores.shape and torch.equal(got.cpu(), argsort_reference(scores, 40))


def test_prefix_counts_match_the_argsort_counts(seed, device):
    cum = torch.randint(0, 4, (9, 5)).float().cumsum(1)  # non-decreasing per block, many ties
    cum[2, 3:] = float("inf")  # a block whose candidates end early
    counts = sequential_select.prefix_counts(cum.to(device), 20)
    ranks = sequential_select.step_ranks(cum)
    expected = argsort_reference(ranks, 20).sum(1)
    assert counts.device.type == torch.device(device).type and torch.equal(counts.cpu(), expected)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf"), 3e38])
def test_all_finite_quick_on_every_device(device, value):
    """The gradient check's quick pass (a max-|g| over all tensors off the CPU, sums on it) says
    non-finite for any NaN or ±inf and never for finite values, however large (3e38: the sums
    overflow, so the CPU path answers "maybe not" and the exact per-tensor check decides)."""
    from obert_kernels.core.grad_buffer import all_finite_quick, check_all_finite

    grads = [torch.randn(37, device=device), torch.randn(5, 7, device=device), torch.randn(1, device=device)]
    assert all_finite_quick(grads)
    grads[1][2, 3] = value
    finite = value == 3e38
    assert all_finite_quick(grads) == finite  # one huge value: no sum overflows yet
    if finite:
        grads[1].fill_(value)
        check_all_finite(["a", "b", "c"], grads)  # finite: accepted
    else:
        with pytest.raises(ValueError, match="gradient of 'b' has non-finite"):
            check_all_finite(["a", "b", "c"], grads)
