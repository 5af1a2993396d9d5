"""FisherPruner on each kernel backend present against the same pruner on backend="torch",
and the pruner handing the "obs" update its scoring factors.

One test for every backend (it replaces the copies test_triton.py and test_cuda.py used to hold); a
backend that cannot serve the pruner's calls is skipped with its own reasons.
"""
import copy
import warnings

import pytest
import torch
from conftest import KERNEL_BACKENDS, rel_err

from obert_kernels import FisherPruner, ops, parse_pattern
from obert_kernels.ops.backends.torch import update as update_mod

# "tiny": 20→12→8 MLP, B = 12, two steps (0.3, 0.6) of 10 gradients (the former test_triton.py cases);
# "wide": 64→48→10 MLP, B = 50, one step (0.5) of 64 gradients (the former test_cuda.py cases)
SIZES = {
    "tiny": dict(widths=(20, 12, 8), block_size=12, num_grads=10, damp=1e-3, chunk_size=4, steps=(0.3, 0.6)),
    "wide": dict(widths=(64, 48, 10), block_size=50, num_grads=64, damp=1e-2, chunk_size=16, steps=(0.5,)),
}
# (pattern, update, Fisher method, storage, size)
CASES = [
    ("unstructured", "obs", "woodbury", "dense", "tiny"),
    ("block4", "joint", "direct", "dense", "tiny"),
    ("2:4", "obs", "woodbury", "dense", "tiny"),
    ("unstructured", "obs", "woodbury", "dense", "wide"),
    ("unstructured", "obs", "woodbury", "packed", "wide"),
]


def mlp(widths):
    return torch.nn.Sequential(torch.nn.Linear(widths[0], widths[1]), torch.nn.ReLU(), torch.nn.Linear(widths[1], widths[2]))


def require_pruner(backend, pattern, update, method, B):
    """The backend serves the calls this pruner makes (dense F⁻¹: conftest.Backend.require)."""
    dev = backend.device
    finv, w, grads = ops.init_finv(1, B, 1.0, device=dev), torch.randn(B, device=dev), torch.randn(2, B, device=dev)
    for op in (("woodbury_update",) if method == "woodbury" else ("fisher_accumulate", "fisher_invert")):
        backend.require(op, finv=finv, grads=grads)
    backend.require("obs_scores", weight=w, finv=finv, pattern=parse_pattern(pattern))
    backend.require("obs_update", weight=w, finv=finv, pattern=parse_pattern(pattern), update=update)


@pytest.mark.parametrize("backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("pattern,update,method,storage,size", CASES)
def test_pruner_on_backend_matches_torch(seed, backend, pattern, update, method, storage, size):
    cfg = SIZES[size]
    require_pruner(backend, pattern, update, method, cfg["block_size"])
    if size != "tiny":
        backend.skip_if_interpreted("the interpreter runs the tiny cases")
    model = mlp(cfg["widths"]).to(backend.device)
    twin = copy.deepcopy(model)
    kw = dict(block_size=cfg["block_size"], num_grads=cfg["num_grads"], damp=cfg["damp"], pattern=pattern, update=update,
              chunk_size=cfg["chunk_size"], fisher_method=method, fisher_storage=storage, verbose=False)
    pruners = [FisherPruner(model, backend=backend.name, **kw), FisherPruner(twin, backend="torch", **kw)]
    for step in cfg["steps"]:
        for _ in range(cfg["num_grads"]):
            grads = [torch.randn(p.shape, device=backend.device) for p in (model[0].weight, model[2].weight)]
            for pruner in pruners:
                pruner.add_grads(grads)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no fallback warnings expected on these well-posed inputs
            reports = [pruner.prune(step) for pruner in pruners]
    assert reports[0].backend == backend.name
    for name in pruners[0].names:
        assert torch.equal(pruners[0].masks[name], pruners[1].masks[name])
    for mine, theirs in zip(model.parameters(), twin.parameters()):
        assert rel_err(mine, theirs) < 1e-4
    target = 0.5 if pattern == "2:4" else cfg["steps"][-1]
    assert abs(pruners[0].sparsity - target) < 0.05


@pytest.mark.parametrize("pattern", ["block4", "2:4"])
def test_pruner_obs_update_uses_the_factors(seed, monkeypatch, pattern):
    """update="obs" solves each group once, in scoring; "joint" still solves in the update."""
    solves = []
    real = update_mod._masked_solve
    monkeypatch.setattr(update_mod, "_masked_solve", lambda *a: solves.append(1) or real(*a))
    for update in ("obs", "joint"):
        model = torch.nn.Sequential(torch.nn.Linear(24, 16), torch.nn.ReLU(), torch.nn.Linear(16, 8))
        pruner = FisherPruner(model, block_size=8, num_grads=12, damp=1e-3, pattern=pattern, update=update,
                              chunk_size=4, verbose=False, backend="torch")
        for _ in range(12):
            pruner.add_grads([torch.randn_like(model[0].weight), torch.randn_like(model[2].weight)])
        solves.clear()
        pruner.prune(0.5)
        assert (len(solves) > 0) == (update == "joint"), update
