"""one_shot_prune on a real network, recomputation, and the gradual schedule."""
import copy
import itertools

import pytest
import torch
from torch import nn

from obert_kernels import FisherPruner, GradualSchedule, cubic_sparsity, magnitude_prune, one_shot_prune
from obert_kernels.app.demo import accuracy, cross_entropy_loss, endless_batches, load_digits_data, make_mlp, train
from obert_kernels.recipes.one_shot import recomputation_targets


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    data = load_digits_data(seed=0)
    dense = train(make_mlp(seed=0), data, seed=0)
    return data, dense


def test_obert_keeps_far_more_accuracy_than_magnitude(digits):
    """The paper's claim in miniature: at 90% sparsity oBERT ("obs") keeps the network
    working where magnitude pruning breaks it (measured here: ~82% vs ~32%)."""
    data, dense = digits
    assert accuracy(dense, data.x_test, data.y_test) > 0.95
    pruned = copy.deepcopy(dense)
    p = one_shot_prune(pruned, cross_entropy_loss, endless_batches(data, 8, seed=1), 0.9, num_recomputations=4,
                       block_size=32, num_grads=128, damp=1e-6, update="obs", progress=False, verbose=False)
    magnitude = copy.deepcopy(dense)
    magnitude_prune(magnitude, 0.9)
    acc_obert = accuracy(pruned, data.x_test, data.y_test)
    acc_mag = accuracy(magnitude, data.x_test, data.y_test)
    assert p.sparsity == pytest.approx(0.9, abs=1e-4)
    assert len(p.history) == 4
    assert acc_obert > acc_mag + 0.25, (acc_obert, acc_mag)


def test_recomputation_steps_and_masks_held(digits):
    data, dense = digits
    model = copy.deepcopy(dense)
    p = one_shot_prune(model, cross_entropy_loss, endless_batches(data, 8, seed=2), 0.6, num_recomputations=3,
                       block_size=32, num_grads=16, damp=1e-4, progress=False, verbose=False)
    assert [round(r.sparsity, 3) for r in p.history] == [0.2, 0.4, 0.6]
    for earlier, later in itertools.pairwise(p.history):
        assert later.num_pruned >= earlier.num_pruned
    for name, mask in p.masks.items():
        assert torch.all(dict(model.named_parameters())[name][~mask] == 0)


def test_recomputation_targets():
    assert recomputation_targets(0.2, 0.8, 3) == pytest.approx([0.4, 0.6, 0.8])
    with pytest.raises(ValueError, match="num_recomputations"):
        recomputation_targets(0.0, 0.5, 0)


def test_batches_running_out_is_a_clear_error():
    model = nn.Linear(4, 2)
    batches = [torch.randn(3, 4)] * 5
    with pytest.raises(ValueError, match="batches ran out with 5 of 8"):
        one_shot_prune(model, lambda m, b: m(b).sum(), batches, 0.5, block_size=4, num_grads=8, progress=False, verbose=False)


def test_cubic_schedule_values():
    assert cubic_sparsity(0, 0, 10, 0.1, 0.9) == pytest.approx(0.1)
    assert cubic_sparsity(10, 0, 10, 0.1, 0.9) == pytest.approx(0.9)
    assert cubic_sparsity(5, 0, 10, 0.0, 0.8) == pytest.approx(0.8 - 0.8 * 0.125)
    assert cubic_sparsity(50, 0, 10, 0.0, 0.8) == pytest.approx(0.8)


def _train_with_schedule(sched_kwargs, steps=40, observe=True, seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    pruner = FisherPruner(model, block_size=8, num_grads=4, damp=1e-3, verbose=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    sched = GradualSchedule(pruner, **sched_kwargs)
    for t in range(steps):
        idx = torch.randint(0, 64, (8,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        if observe:
            sched.observe_grads(t)
        opt.step()
        sched.step(t)
        for name, mask in pruner.masks.items():  # masks held after every optimizer step
            assert torch.all(dict(model.named_parameters())[name][~mask] == 0)
    return pruner, sched


def test_gradual_schedule_from_training_gradients():
    pruner, sched = _train_with_schedule(dict(init_sparsity=0.1, final_sparsity=0.8, start_step=5, end_step=30, update_every=5))
    assert sched.pruning_steps() == [5, 10, 15, 20, 25, 30]
    targets = [r.target_sparsity for r in sched.reports]
    assert targets == pytest.approx([sched.sparsity_at(t) for t in sched.pruning_steps()])
    assert pruner.sparsity == pytest.approx(0.8, abs=1e-3)


def test_gradual_schedule_with_fresh_gradients():
    torch.manual_seed(1)
    x = torch.randn(64, 16)

    def batches():
        while True:
            yield x[torch.randint(0, 64, (8,))]

    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))
    pruner = FisherPruner(model, block_size=8, num_grads=6, damp=1e-3, verbose=False)
    sched = GradualSchedule(pruner, final_sparsity=0.7, start_step=0, end_step=6, update_every=2,
                            loss_fn=lambda m, b: m(b).pow(2).mean(), batches=batches(), model=model)
    for t in range(10):
        sched.step(t)
    assert len(sched.reports) == 4 and pruner.sparsity == pytest.approx(0.7, abs=1e-3)


def test_gradual_schedule_config_errors():
    pruner = FisherPruner(nn.Linear(8, 8), block_size=8, num_grads=16, verbose=False)
    with pytest.raises(ValueError, match="update_every"):
        GradualSchedule(pruner, final_sparsity=0.5, start_step=0, end_step=100, update_every=10)
    with pytest.raises(ValueError, match="final_sparsity"):
        GradualSchedule(pruner, final_sparsity=1.0, start_step=0, end_step=100, update_every=20)
    with pytest.raises(ValueError, match="both loss_fn and batches"):
        GradualSchedule(pruner, final_sparsity=0.5, start_step=0, end_step=100, update_every=20, loss_fn=lambda m, b: 0)
