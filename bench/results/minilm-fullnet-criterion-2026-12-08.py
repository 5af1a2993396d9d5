"""Diagnostic (issue 12): does the held-out criterion rank MiniLM's α correctly when it is taken over
the whole network's update instead of auto's 4,096-block sample?

The table's protocol (examples/minilm_prune_table.py: 256 Gauss-Newton gradients of 4 sentences, B = 32,
k = 32, 64 tokens, seed 0, 1,500 held-out sentences). For each fixed global α, one prune step
(--method, R = 1) from the dense model. Then three numbers for its update Δw (all 36 tensors):
  full:   ½ mean_j (g_jᵀΔw)² over H held-out Gauss-Newton gradients g_j, taken at the dense weights with
          their own ε seed and batch seed (drawn from the same Fisher sentences: the 3,914 stdlib
          sentences are all in the Fisher or the evaluation set);
  sample: the same with g_jᵀΔw summed over auto's sampled blocks only (the seeded 4,096 of 331,776);
  mean cosine / NN agreement on the 1,500 held-out sentences.
  python bench/results/minilm-fullnet-criterion-2026-12-08.py --alphas 2.77e-4 2.77e-3 8.75e-3 2.77e-2 8.75e-2 0.875
"""
import argparse
import copy
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from obert_kernels.app.text import split_sentences, stdlib_sentences  # noqa: E402
from obert_kernels.integrations.hf_models import (embedding_agreement, encoder_weights, load_sentence_encoder,  # noqa: E402
                                                  sentence_batches)
from obert_kernels.recipes.probes import GaussNewtonProbe  # noqa: E402
from obert_kernels.recipes.prune_model import prune_model  # noqa: E402


def flat(model) -> torch.Tensor:
    return torch.cat([w.detach().reshape(-1) for _, w in encoder_weights(model)])


def heldout_grads(encoder, model, sentences, n, seed) -> torch.Tensor:
    """(n, d) float32 Gauss-Newton gradients at the model's weights, ε seed and batch seed ``seed``."""
    probe, batches = GaussNewtonProbe(encoder.embed, seed=seed), sentence_batches(encoder, sentences, 4, seed=seed + 1)
    weights = [w for _, w in encoder_weights(model)]
    out = torch.empty(n, sum(w.numel() for w in weights))
    for j in range(n):
        model.zero_grad()
        probe(model, next(batches)).backward()
        out[j] = torch.cat([w.grad.reshape(-1) for w in weights])
    model.zero_grad()
    return out


def increase(dots: torch.Tensor) -> tuple[float, float]:
    """½ mean (g_jᵀΔw)² and its standard error over j."""
    t = dots.double() ** 2 / 2
    return t.mean().item(), (t.std() / math.sqrt(t.numel())).item()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--alphas", type=float, nargs="+", default=[2.77e-4, 2.77e-3, 8.75e-3, 2.77e-2, 8.75e-2, 0.875])
    ap.add_argument("--method", default="joint")
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--heldout", type=int, default=64, help="held-out gradients H")
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    encoder = load_sentence_encoder("all-MiniLM-L6-v2", max_length=64)
    sentences = stdlib_sentences()
    held_out, fisher_text = split_sentences(sentences, [1500, len(sentences) - 1500], seed=0)
    dense_model = encoder.model
    dense_emb = encoder.encode(held_out)
    G = heldout_grads(encoder, copy.deepcopy(dense_model), fisher_text, args.heldout, seed=12345)
    nb, B = G.shape[1] // 32, 32
    sample = torch.randperm(nb, generator=torch.Generator().manual_seed(0))[:4096].sort().values
    G_sample = G.view(args.heldout, nb, B)[:, sample].reshape(args.heldout, -1)
    w0, rows = flat(dense_model), []
    for alpha in args.alphas:
        model = copy.deepcopy(dense_model)
        start = time.perf_counter()
        prune_model(model, encoder_weights(model), args.method, args.sparsity, loss_fn=GaussNewtonProbe(encoder.embed, seed=0),
                    batches=sentence_batches(encoder, fisher_text, 4, seed=1), num_recomputations=1, progress=False,
                    block_size=32, num_grads=256, chunk_size=32, damp=f"rel:{alpha!r}:global", verbose=False)
        dw = flat(model) - w0
        dots_full, dots_sample = G @ dw, G_sample @ dw.view(nb, B)[sample].reshape(-1)
        full, full_se = increase(dots_full)
        samp, samp_se = increase(dots_sample)
        metrics = embedding_agreement(dense_emb, encoder.encode(held_out, model=model))
        rows.append({"alpha": alpha, "full": full, "full_se": full_se, "sample": samp, "sample_se": samp_se,
                     "dw_norm": dw.norm().item(), **metrics,
                     "dots_full": dots_full.tolist(), "dots_sample": dots_sample.tolist(), "seconds": time.perf_counter() - start})
        print(f"α {alpha:.3g}: full {full:.4g} ± {full_se:.2g}, sample {samp:.4g} ± {samp_se:.2g}, "
              f"cos {metrics['mean_cosine']:.4f} NN {metrics['nn_agreement']:.3f}", flush=True)
    args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
