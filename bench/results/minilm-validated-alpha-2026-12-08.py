"""Experiment (issue 12): choose each prune step's α by the pruned network itself. For each candidate
α, the whole step (rel:α:global) runs on a copy of the model and its pruner (the same gradients), and
the copy whose embeddings stay closest to the dense model's on V validation sentences wins. The
objective is mean 1 − cos(z, z_dense), the metric's own loss. The validation sentences are the first V
of the Fisher sentences, never the 1,500 evaluation sentences. The table's protocol
(examples/minilm_prune_table.py: 256 Gauss-Newton gradients of 4 sentences, B = 32, k = 32, 64 tokens,
seed 0); each row is compared with the baseline file's row (paired intervals, that script's checks).
  python bench/results/minilm-validated-alpha-2026-12-08.py --rows joint:0.7:1 joint:0.8:1 obs:0.7:4 obs:0.8:4 \
      --baseline-json bench/results/minilm-cpu-2026-11-21.json --out OUT
"""
import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "examples"))
from minilm_prune_table import baseline_checks  # noqa: E402
from obert_kernels import FisherPruner  # noqa: E402
from obert_kernels.app.text import split_sentences, stdlib_sentences  # noqa: E402
from obert_kernels.integrations.hf_models import (embedding_agreement, encoder_weights, load_sentence_encoder,  # noqa: E402
                                                  sentence_batches)
from obert_kernels.recipes.one_shot import collect_grads, recomputation_targets  # noqa: E402
from obert_kernels.recipes.probes import GaussNewtonProbe  # noqa: E402
from obert_kernels.recipes.prune_model import grads_only_for  # noqa: E402

CANDIDATES = (2.77e-3, 8.75e-3, 2.77e-2, 8.75e-2, 2.77e-1)  # the grid's half-decades × (m − k)/m


def objective(encoder, model, sentences, dense_val) -> float:
    """Mean 1 − cos(z, z_dense) over the validation sentences."""
    return 1.0 - embedding_agreement(dense_val, encoder.encode(sentences, model=model))["mean_cosine"]


def run_row(encoder, dense_model, dense_emb, held_out, fisher_text, val, dense_val, method, sparsity, steps,
            scales=("global",)):
    model = copy.deepcopy(dense_model)
    pruner = FisherPruner(encoder_weights(model), update=method, block_size=32, num_grads=256, chunk_size=32,
                          damp="rel:0.01:global", verbose=False)
    probe, batches = GaussNewtonProbe(encoder.embed, seed=0), iter(sentence_batches(encoder, fisher_text, 4, seed=1))
    chosen, start = [], time.perf_counter()
    for target in recomputation_targets(0.0, sparsity, steps):
        with grads_only_for(model, [t for _, t in encoder_weights(model)]):  # the winning copy's, after step 1
            collect_grads(pruner, model, probe, batches, progress=False)
        tried = {}
        for alpha, scale in [(a, sc) for sc in scales for a in CANDIDATES]:
            m_c, p_c = copy.deepcopy((model, pruner))  # one memo: the copy's pruner tracks the copy's weights
            p_c.damp = f"rel:{alpha!r}:{scale}"
            alpha = alpha if scale == "global" else f"{alpha}:{scale}"
            p_c.prune(target)
            tried[alpha] = (objective(encoder, m_c, val, dense_val), m_c, p_c)
            del m_c, p_c
        best = min(tried, key=lambda a: tried[a][0])
        values = {a: v[0] for a, v in tried.items()}
        _, model, pruner = tried.pop(best)
        del tried
        chosen.append(best)
        print(f"  {method} {target:.0%}: α {best}; objective " + ", ".join(f"{a}: {v:.4f}" for a, v in values.items()),
              file=sys.stderr, flush=True)
    metrics = embedding_agreement(dense_emb, encoder.encode(held_out, model=model), per_sentence=True)
    return {"method": method, "sparsity": sparsity, "recomputations": steps, "damp": "validated:" + "+".join(scales),
            "chosen": chosen,
            **metrics, "seconds": time.perf_counter() - start}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", nargs="+", default=["joint:0.7:1", "joint:0.8:1", "obs:0.7:4", "obs:0.8:4"])
    ap.add_argument("--scales", nargs="+", default=["global"], choices=["global", "tensor"],
                    help="the λ scales tried, each with every candidate α")
    ap.add_argument("--validation", type=int, default=64, help="validation sentences V (from the Fisher sentences)")
    ap.add_argument("--baseline-json", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    encoder = load_sentence_encoder("all-MiniLM-L6-v2", max_length=64)
    sentences = stdlib_sentences()
    held_out, fisher_text = split_sentences(sentences, [1500, len(sentences) - 1500], seed=0)
    dense_model = encoder.model
    dense_emb, val = encoder.encode(held_out), fisher_text[: args.validation]
    dense_val = encoder.encode(val)
    rows = []
    for spec in args.rows:
        method, s, r = spec.split(":")
        rows.append(run_row(encoder, dense_model, dense_emb, held_out, fisher_text, val, dense_val, method, float(s), int(r),
                            tuple(args.scales)))
        print(f"{spec}: cos {rows[-1]['mean_cosine']:.4f} NN {rows[-1]['nn_agreement']:.3f} α {rows[-1]['chosen']} "
              f"({rows[-1]['seconds']:.0f} s)", flush=True)
        args.out.with_suffix(".json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}))
    if args.baseline_json:
        for line in baseline_checks(rows, json.loads(args.baseline_json.read_text())["rows"], args.baseline_json.name):
            print("  " + line)


if __name__ == "__main__":
    main()
