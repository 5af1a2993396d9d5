"""Gradual oBERT with 4 pruning steps 40 apart (--update-every 40) against one-shot oBERT R=4 + recovery and
against gradual with 10 steps 17 apart, MiniLM at 90%, seeds 0-2, paired over the held-out sentences and over seeds.

    python bench/results/minilm-gradual-90-ue40-seeds-2026-11-30.py   (from the repository root)
"""
import json
import math

import torch

R = "bench/results/"
BASE = {0: R + "minilm-gradual-onecmd-2026-11-30.json", 1: R + "minilm-gradual-90-seed1-2026-11-30.json",
        2: R + "minilm-gradual-90-seed2-2026-11-30.json"}  # one-shot R=4 and gradual with 10 steps
NEW = {s: R + f"minilm-gradual-90-ue40-seed{s}-2026-11-30.json" for s in (0, 1, 2)}
T95_DF2 = 4.303


def rows(path):
    return {r["method"].split()[0]: r for r in json.load(open(path))["rows"] if r["sparsity"] == 0.9}


def paired(a, b, key):
    d = torch.tensor(a[key], dtype=torch.float64) - torch.tensor(b[key], dtype=torch.float64)
    return d.mean().item(), 1.96 * d.std().item() / d.numel() ** 0.5


def main():
    diffs = {k: {"cos": [], "NN": []} for k in ("one-shot", "gradual")}
    for s in (0, 1, 2):
        g, base = rows(NEW[s])["gradual"], rows(BASE[s])
        line = f"seed {s}: gradual, 4 steps {g['mean_cosine']:.4f}/{g['nn_agreement']:.3f}"
        for key, label in (("one-shot", "one-shot R=4 + recovery"), ("gradual", "gradual, 10 steps")):
            o = base[key]
            c, ch = paired(g, o, "cosine_each")
            n, nh = paired(g, o, "nn_same")
            diffs[key]["cos"].append(c)
            diffs[key]["NN"].append(n)
            line += (f"\n  − {label} {o['mean_cosine']:.4f}/{o['nn_agreement']:.3f}: cos {c:+.4f} [{c - ch:+.4f}, {c + ch:+.4f}]"
                     f"  NN {n:+.4f} [{n - nh:+.4f}, {n + nh:+.4f}]")
        print(line)
    for key, by in diffs.items():
        for name, d in by.items():
            m = sum(d) / len(d)
            h = T95_DF2 * math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1)) / math.sqrt(len(d))
            print(f"over the 3 seeds, 4 steps − {key}, {name}: mean {m:+.4f}, 95% t-interval [{m - h:+.4f}, {m + h:+.4f}]")


if __name__ == "__main__":
    main()
