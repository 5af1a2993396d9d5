"""The embedded default job: one-shot prune a small MLP trained on scikit-learn's digits.

Trains a 64-128-128-10 MLP on the 8×8 digit images that ship with scikit-learn (seconds
on a CPU), then prunes copies of it one-shot to each sparsity with oBERT, with sequential OBS
(update="sequential", on the same gradients) and with global
magnitude pruning, and prints test accuracy side by side. No network, no downloads.

    python -m obert_kernels demo [--sparsities 0.5 0.7 0.8 0.9 0.95] [--update obs] [--seed 0] [--plot PNG]

(``python -m obert_kernels.app.demo`` runs the same.) The plot of accuracy vs sparsity needs
matplotlib (``pip install 'obert_kernels[plot]'``); without it the table is still printed.
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..recipes.baselines import magnitude_prune
from ..recipes.one_shot import one_shot_prune
from .options import DemoOptions

__all__ = ["DigitsData", "load_digits_data", "make_mlp", "train", "accuracy", "endless_batches", "run_demo",
           "plot_accuracy", "add_arguments", "run_demo_command"]


@dataclass
class DigitsData:
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_data(seed: int = 0, test_fraction: float = 0.25) -> DigitsData:
    """scikit-learn's digits (1797 images of 8×8), scaled to [0, 1], split reproducibly."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise ImportError("the digits demo needs scikit-learn: pip install 'obert_kernels[demo]'") from exc
    digits = load_digits()
    x = torch.tensor(digits.data, dtype=torch.float32) / 16.0
    y = torch.tensor(digits.target, dtype=torch.long)
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_test = int(len(x) * test_fraction)
    test, tr = perm[:n_test], perm[n_test:]
    return DigitsData(x[tr], y[tr], x[test], y[test])


def make_mlp(seed: int = 0, hidden: int = 128) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def train(model: nn.Module, data: DigitsData, epochs: int = 40, batch_size: int = 64, seed: int = 0) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(data.x_train), generator=gen).split(batch_size):
            opt.zero_grad()
            nn.functional.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    return model


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return (model(x).argmax(-1) == y).float().mean().item()


def endless_batches(data: DigitsData, batch_size: int, seed: int):
    """Random training mini-batches forever (each a fresh draw): the Fisher's gradient samples."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        idx = torch.randint(len(data.x_train), (batch_size,), generator=gen)
        yield data.x_train[idx], data.y_train[idx]


def cross_entropy_loss(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return nn.functional.cross_entropy(model(x), y)


# Chosen on this MLP (2026-11-21, CPU): damp 1e-4 / 1e-6 / 1e-7 gave 43% / 47% / 52% at 90%
# sparsity with one step; 4 recomputation steps lifted damp 1e-6 to 82-89%.
def run_demo(sparsities=(0.5, 0.7, 0.8, 0.9, 0.95), *, seed: int = 0, update: str = "obs", block_size: int = 32,
             num_grads: int = 128, grad_batch_size: int = 8, damp: float | str = 1e-6, num_recomputations: int = 4,
             backend: str = "auto", progress: bool = True, print_table: bool = True) -> list[dict]:
    """Train once, prune copies at each sparsity with ``update``, with sequential OBS (issue 11; the
    same gradient stream, skipped when ``update`` is "sequential") and by magnitude.

    Returns rows {sparsity, obert, sequential (None when skipped), magnitude, seconds, sequential_seconds, dense}."""
    data = load_digits_data(seed)
    dense = train(make_mlp(seed), data, seed=seed)
    dense_acc = accuracy(dense, data.x_test, data.y_test)

    def pruned_accuracy(s: float, how: str) -> tuple[float, float]:
        model, start = copy.deepcopy(dense), time.perf_counter()
        one_shot_prune(model, cross_entropy_loss, endless_batches(data, grad_batch_size, seed + 1), s,
                       num_recomputations=num_recomputations, block_size=block_size, num_grads=num_grads,
                       damp=damp, update=how, backend=backend, progress=progress, verbose=False)
        return accuracy(model, data.x_test, data.y_test), time.perf_counter() - start

    rows = []
    for s in sparsities:
        obert, seconds = pruned_accuracy(s, update)
        sequential, seq_seconds = pruned_accuracy(s, "sequential") if update != "sequential" else (None, None)
        magnitude = copy.deepcopy(dense)
        magnitude_prune(magnitude, s)
        rows.append({"sparsity": s, "obert": obert, "sequential": sequential,
                     "magnitude": accuracy(magnitude, data.x_test, data.y_test), "seconds": seconds,
                     "sequential_seconds": seq_seconds, "dense": dense_acc})
    if print_table:
        print_demo_table(rows, f"update={update}, B={block_size}, m={num_grads}, damp={_damp_text(damp)}, "
                               f"recomputations={num_recomputations}")
    return rows


def print_demo_table(rows: list[dict], settings: str) -> None:
    """The demo's table: oBERT, sequential (when run) and magnitude accuracy, prune seconds."""
    dense_acc = rows[0]["dense"] if rows else float("nan")
    with_seq = any(r["sequential"] is not None for r in rows)
    print(f"digits MLP 64-128-128-10, dense test accuracy {dense_acc:.2%} (oBERT: {settings})")
    print(f"{'sparsity':>8}  {'oBERT':>8}" + (f"  {'sequential':>10}" if with_seq else "") + f"  {'magnitude':>9}  {'prune s':>7}")
    for r in rows:
        seq = f"  {r['sequential']:>10.2%}" if with_seq else ""
        print(f"{r['sparsity']:>8.0%}  {r['obert']:>8.2%}{seq}  {r['magnitude']:>9.2%}  {r['seconds']:>7.2f}")


def _damp_text(damp) -> str:
    """A number as ``:g`` prints it (1e-06, as the table always showed), "auto"/"rel:..." as typed."""
    try:
        return f"{float(damp):g}"
    except (TypeError, ValueError):
        return str(damp)


def plot_accuracy(rows: list[dict], path, title: str, dense_accuracy: float | None = None) -> Path:
    """PNG of test accuracy vs sparsity, oBERT (and sequential, when run) and magnitude; written whole or not at all.

    rows: run_demo's rows. Raises ImportError (with the install line) without matplotlib.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display needed
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the accuracy plot needs matplotlib: pip install 'obert_kernels[plot]'") from exc
    xs = [100 * r["sparsity"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(xs, [100 * r["obert"] for r in rows], "o-", label="oBERT")
    if any(r.get("sequential") is not None for r in rows):
        ax.plot(xs, [100 * r["sequential"] for r in rows], "^-", label="sequential OBS")
    ax.plot(xs, [100 * r["magnitude"] for r in rows], "s--", label="magnitude")
    if dense_accuracy is not None:
        ax.axhline(100 * dense_accuracy, color="gray", lw=0.8, ls=":", label="dense")
    ax.set(xlabel="sparsity (%)", ylabel="test accuracy (%)", title=title, ylim=(0, 100))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return save_png(fig, path)


def save_png(fig, path) -> Path:
    """Write a matplotlib figure to ``path`` as PNG whole or not at all (a temp file beside it,
    then os.replace), readable by others (mkstemp makes it 0600); closes the figure."""
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".png", prefix=f".{path.stem}-", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def add_arguments(ap: argparse.ArgumentParser) -> None:
    """The demo's flags: defined in app/cli.py with the other subcommands' (cli.py imports no torch)."""
    from .cli import add_demo_arguments

    add_demo_arguments(ap)


def run_demo_command(options: DemoOptions) -> list[dict]:
    """``demo``: run_demo with the options, then the plot unless options.plot is None."""
    rows = run_demo(options.sparsities, seed=options.seed, update=options.update, block_size=options.block_size,
                    num_grads=options.num_grads, damp=options.damp, num_recomputations=options.num_recomputations,
                    backend=options.backend, progress=options.progress)
    if options.plot is not None:
        title = f"digits MLP: one-shot oBERT ({options.update}, R={options.num_recomputations}), sequential, magnitude"
        try:
            print(f"plot: {plot_accuracy(rows, options.plot, title, rows[0].get('dense') if rows else None)}")
        except ImportError as exc:
            print(f"no plot: {exc}", file=sys.stderr)
    return rows


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description="One-shot oBERT vs magnitude pruning of an MLP on scikit-learn's digits")
    add_arguments(ap)
    run_demo_command(DemoOptions.from_args(ap.parse_args(argv)))


if __name__ == "__main__":
    main()
