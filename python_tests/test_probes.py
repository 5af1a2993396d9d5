"""The Gauss-Newton probe: gradients whose outer products average to JᵀJ."""
import pytest
import torch
from torch import nn

from obert_kernels import FisherPruner
from obert_kernels.recipes.probes import GaussNewtonProbe, gauss_newton_loss


def test_probe_gradients_sample_the_gauss_newton_matrix(seed):
    """z = tanh(W x) for a batch of x: E[g gᵀ] over fresh ε must be Σᵢ JᵢᵀJᵢ (computed exactly)."""
    n, d_in, d_out = 3, 5, 4
    x = torch.randn(n, d_in, dtype=torch.float64)
    w = torch.randn(d_out, d_in, dtype=torch.float64, requires_grad=True)

    def outputs(weight):
        return torch.tanh(x @ weight.T)

    jac = torch.autograd.functional.jacobian(outputs, w.detach()).reshape(n * d_out, -1)  # (n·d_out, d_out·d_in)
    gn = jac.T @ jac
    samples = 20000
    acc = torch.zeros_like(gn)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(samples):
        w.grad = None
        gauss_newton_loss(outputs(w), gen).backward()
        g = w.grad.reshape(-1)
        acc += torch.outer(g, g)
    est = acc / samples
    err = ((est - gn).norm() / gn.norm()).item()
    # Monte Carlo error ~ sqrt(2/samples)·(a few) ≈ 0.02; twice the matrix is 100% off
    assert err < 0.05, err
    assert ((2 * gn - gn).norm() / gn.norm()).item() > 10 * 0.05


def test_probe_is_label_free_and_reproducible(seed):
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x = torch.randn(4, 6)

    def grads(probe):
        model.zero_grad()
        probe(model, x).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    a, b = GaussNewtonProbe(lambda m, batch: m(batch), seed=seed), GaussNewtonProbe(lambda m, batch: m(batch), seed=seed)
    g1, g2 = grads(a), grads(a)
    assert not torch.equal(g1, g2)  # fresh ε per gradient
    assert torch.equal(grads(b), g1)  # same seed, same draws
    p = FisherPruner(model, block_size=8, num_grads=4, damp="rel:0.01", verbose=False)
    probe = GaussNewtonProbe(lambda m, batch: m(batch), seed=seed)
    for _ in range(4):
        model.zero_grad()
        probe(model, x).backward()
        p.add_grads()
    assert p.prune(0.5).sparsity == pytest.approx(0.5)


def test_probe_rejects_non_float_outputs():
    with pytest.raises(TypeError, match="floating-point"):
        gauss_newton_loss(torch.ones(3, dtype=torch.long))


def test_sampled_labels_follow_the_models_softmax(seed):
    """Labels drawn by SampledFisherProbe on fixed logits: frequencies match softmax (a chi-square
    bound), and the loss's gradient wrt the logits is softmax − onehot(drawn label), summed."""
    from obert_kernels.recipes.probes import SampledFisherProbe, sampled_label_loss

    logits = torch.tensor([[2.0, 0.0, -1.0, 1.0]])
    probs = torch.softmax(logits, -1)[0].double()
    n = 20000
    gen = torch.Generator().manual_seed(seed)
    counts = torch.zeros(4, dtype=torch.float64)
    batch = logits.expand(n, 4).clone().requires_grad_(True)
    loss = sampled_label_loss(batch, gen)
    loss.backward()
    onehot = (torch.softmax(batch.detach(), -1) - batch.grad).round()  # the drawn labels, one-hot
    assert torch.allclose(onehot.sum(1), torch.ones(n))
    counts = onehot.sum(0).double()
    chi2 = float(((counts - n * probs) ** 2 / (n * probs)).sum())
    assert chi2 < 20.0, chi2  # 3 degrees of freedom: P(chi2 > 20) ≈ 2e-4
    uniform = torch.full((4,), n / 4.0, dtype=torch.float64)
    assert float(((counts - uniform) ** 2 / uniform).sum()) > 1000  # uniform labels would be far off
    # the probe: reproducible with its seed, different from the data's labels' gradient
    model = nn.Linear(3, 4)
    x = torch.randn(16, 3)

    def grad(loss_fn):
        model.zero_grad()
        loss_fn(model, (x, torch.zeros(16, dtype=torch.long))).backward()
        return model.weight.grad.clone()

    fwd = lambda m, b: m(b[0])  # noqa: E731
    assert torch.equal(grad(SampledFisherProbe(fwd, seed=1)), grad(SampledFisherProbe(fwd, seed=1)))
    assert not torch.equal(grad(SampledFisherProbe(fwd, seed=1)), grad(SampledFisherProbe(fwd, seed=2)))
    with pytest.raises(TypeError):
        sampled_label_loss(torch.zeros(3, dtype=torch.long))
