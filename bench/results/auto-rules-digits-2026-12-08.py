"""Experiment (issue 12): what each selection rule over `auto`'s criterion would give on the digits
networks, from one run. Per (seed, net, sparsity), on the same gradients (examples/damping_table.py's
protocol, obs; true labels unless --labels sampled): `auto` (its per-gradient held-out terms, (candidates, k), and its
choice), and the accuracy of every candidate α fixed (rel:α·(m−k)/m:global, exactly the inversion
`auto` makes when it picks α). A rule is then a function of the terms, scored by the accuracy of
the α it picks, offline (analyse with --analyse OUT.json).

    OMP_NUM_THREADS=2 python bench/results/auto-rules-digits-2026-12-08.py --seeds 0 1 2 --out OUT.json
"""
import argparse
import json
import math
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "examples"))
from damping_table import NETS, SPARSITIES, collect, prune_once, trained  # noqa: E402
from obert_kernels import FisherPruner  # noqa: E402
from obert_kernels.app.demo import accuracy, load_digits_data  # noqa: E402
from obert_kernels.core.pruner import prunable_weights  # noqa: E402
import copy  # noqa: E402


def auto_terms(dense, grads, sparsity, settings, chunk):
    model = copy.deepcopy(dense)
    pruner = FisherPruner(prunable_weights(model), damp="auto", chunk_size=chunk, verbose=False, **settings)
    for g in grads:
        pruner.add_grads(g)
    pruner.prune(sparsity)
    d = pruner.damping
    fit = {"candidates": list(d.scores), "terms": d.score_terms.tolist(), "chosen": d.chosen}
    if hasattr(d, "update_rho"):  # run through auto-update-size-2026-12-08.py
        fit |= {"rho": d.update_rho, "removed": d.removed}
    return model, fit


@torch.no_grad()
def train_objectives(dense, pruned, data) -> tuple[float, float]:
    """On the training images (never the test set): mean KL(dense ‖ pruned) of the predictions, and
    the pruned network's mean cross-entropy."""
    x = data.x_train
    ref = torch.log_softmax(dense(x), -1)
    out = torch.log_softmax(pruned(x), -1)
    kl = (ref.exp() * (ref - out)).sum(-1).mean().item()
    return kl, torch.nn.functional.nll_loss(out, data.y_train).item()


def run(args):
    rows = []
    for seed in args.seeds:
        data = load_digits_data(seed)
        for net in args.nets:
            dense = trained(net, data, seed)
            grads = collect(copy.deepcopy(dense), data, args.labels, NETS[net]["num_grads"], seed)
            m, k = NETS[net]["num_grads"], args.chunk_size
            for s in args.sparsities:
                model, fit = auto_terms(dense, grads, s, NETS[net], k)
                row = {"net": net, "seed": seed, "labels": args.labels, "sparsity": s, **fit,
                       "auto_accuracy": accuracy(model, data.x_test, data.y_test), "accuracy": {}}
                row["train_kl"], row["train_ce"] = {}, {}
                for a in fit["candidates"]:
                    fixed, _ = prune_once(dense, grads, f"rel:{a * (m - k) / m!r}:global", s, NETS[net], k)
                    row["accuracy"][repr(a)] = accuracy(fixed, data.x_test, data.y_test)
                    row["train_kl"][repr(a)], row["train_ce"][repr(a)] = train_objectives(dense, fixed, data)
                    if "tensor" in args.scales:  # the per-tensor scale too, keyed "α:tensor"
                        fixed, _ = prune_once(dense, grads, f"rel:{a * (m - k) / m!r}:tensor", s, NETS[net], k)
                        key = f"{a!r}:tensor"
                        row["accuracy"][key] = accuracy(fixed, data.x_test, data.y_test)
                        row["train_kl"][key], row["train_ce"][key] = train_objectives(dense, fixed, data)
                mag, _ = prune_once(dense, grads, "magnitude", s, NETS[net], k)
                row["magnitude"] = accuracy(mag, data.x_test, data.y_test)
                rows.append(row)
                print(f"{net} seed {seed} {s:.0%}: auto {row['auto_accuracy']:.2%} (α {fit['chosen']:.3g}); "
                      + " ".join(f"{float(a):.0e}:{100 * v:.1f}" for a, v in row["accuracy"].items() if ":" not in a),
                      file=sys.stderr, flush=True)
                args.out.write_text(json.dumps({"rows": rows}, indent=0))
    return rows


# ---- offline: the α each rule picks from (candidates, k) terms, scored by the fixed sweep ----
def pick(cands, T, rule, row=None):
    if rule.startswith("val"):  # "valkl" / "valce" (all candidates) or "valkl5": the least training-set
        key = "train_kl" if rule.startswith("valkl") else "train_ce"  # objective of the pruned network
        allowed = [i for i, a in enumerate(cands) if "5" not in rule or 10 ** -2.6 < a < 10 ** -0.4]
        if rule.endswith("s"):  # "valkl5s": over both scales; returns the key ("α" or "α:tensor")
            keys = [repr(cands[i]) + tail for i in allowed for tail in ("", ":tensor")]
            return min(keys, key=lambda q: row[key][q])
        return min(allowed, key=lambda i: row[key][repr(cands[i])])
    if rule.startswith("cap"):  # "capX:rule": the rule on the candidates ≤ X only (the grid cut at X)
        cap, _, inner = rule[3:].partition(":")
        n = sum(a <= float(cap) * (1 + 1e-9) for a in cands)
        return pick(cands[:n], T[:n], inner, row)
    mu = T.mean(1)
    finite = torch.isfinite(mu)
    b = int(torch.argmin(torch.where(finite, mu, torch.tensor(math.inf))))
    k = T.shape[1]
    diff = T - T[b]
    ex = diff.mean(1); se = diff.std(1) / math.sqrt(k)
    ok = lambda i: bool(finite[i])
    name, _, par = rule.partition("=")
    par = float(par) if par else None
    idx = range(len(cands))
    if name == "min": return b
    if name == "cse":  # largest α ≥ best with excess ≤ c·se
        return max(i for i in idx if i >= b and ok(i) and ex[i] <= par * se[i])
    if name == "contig":  # walk right from best while within c·se
        i = b
        while i + 1 < len(cands) and ok(i + 1) and ex[i + 1] <= par * se[i + 1]: i += 1
        return i
    if name == "rel":  # largest α with mean ≤ (1+τ)·least
        return max(i for i in idx if i >= b and ok(i) and mu[i] <= (1 + par) * mu[b])
    if name == "sign":  # largest α where at most a fraction par of gradients is worse than at best
        return max(i for i in idx if i >= b and ok(i) and float((diff[i] > 0).double().mean()) <= par)
    if name == "logse":
        best_i = b
        for i in idx:
            if i >= b and ok(i):
                lr = torch.log(T[i].clamp_min(1e-300) / T[b].clamp_min(1e-300))
                if lr.mean() <= par * lr.std() / math.sqrt(k): best_i = i
        return best_i
    if name == "fixed":
        return min(idx, key=lambda i: abs(math.log(cands[i] / par)))
    raise ValueError(rule)

RULES = [  # c·se rules: "cse=1" is auto's rule today
        "min", "cse=1", "cse=0.5", "cse=2", "contig=1", "contig=2", "rel=0.05", "rel=0.1", "rel=0.25", "rel=0.5",
         "sign=0.5", "sign=0.6", "logse=1", "cap0.1:cse=1", "cap0.32:cse=1", "cap0.1:cse=2", "valkl", "valce", "valkl5", "fixed=0.1", "fixed=0.01"]


def analyse(path: Path, minilm_terms: Path | None) -> str:
    """Per rule: mean accuracy per (net, sparsity) over the seeds, its mean over cells, the
    difference from auto's rule ("cse=1") and how many cells it loses by more than a point; the
    best fixed α per cell and magnitude; then the α each rule picks on the MiniLM fits."""
    import statistics as st
    rows = json.loads(path.read_text())["rows"]
    cells = sorted({(r["net"], r["sparsity"]) for r in rows})
    tensor_sweep = any(q.endswith(":tensor") for q in rows[0]["accuracy"])
    rules = [r for r in RULES + (["valkl5s"] if tensor_sweep else []) if not r.startswith("val") or "train_kl" in rows[0]]

    def acc(r, rule):
        got = pick(r["candidates"], torch.tensor(r["terms"], dtype=torch.float64), rule, r)
        return r["accuracy"][got if isinstance(got, str) else repr(r["candidates"][got])]

    res = {rule: {c: [acc(r, rule) for r in rows if (r["net"], r["sparsity"]) == c] for c in cells} for rule in rules}
    out = [f"{'rule':<10}" + "".join(f"{n}{int(s * 100):>3}  " for n, s in cells) + " | mean  vs 1se (cells >1pt worse)"]
    for rule in rules:
        means = [100 * st.mean(res[rule][c]) for c in cells]
        d = [100 * (st.mean(res[rule][c]) - st.mean(res["cse=1"][c])) for c in cells]
        out.append(f"{rule:<10}" + "".join(f"{m:7.1f}" for m in means) + f" | {st.mean(means):5.1f} {st.mean(d):+5.2f} ({sum(x < -1 for x in d)})")
    best = [max(100 * st.mean(r["accuracy"][repr(a)] for r in rows if (r["net"], r["sparsity"]) == c) for a in rows[0]["candidates"]) for c in cells]
    out.append(f"{'bestfixed':<10}" + "".join(f"{m:7.1f}" for m in best))
    out.append(f"{'magnitude':<10}" + "".join(f"{100 * st.mean(r['magnitude'] for r in rows if (r['net'], r['sparsity']) == c):7.1f}" for c in cells))
    out.append(f"seeds: {sorted({r['seed'] for r in rows})}")
    if "valkl5" in res:  # paired over the seeds (each seed its own network): valkl5 − cse=1, 95% t-interval
        t = {10: 2.262}.get(len(res["cse=1"][cells[0]]), 2.0)
        parts = []
        for c in cells:
            d = [100 * (a - b) for a, b in zip(res["valkl5"][c], res["cse=1"][c])]
            half = t * st.stdev(d) / len(d) ** 0.5
            parts.append(f"{c[0]} {c[1]:.0%} {st.mean(d):+.1f} [{st.mean(d) - half:+.1f}, {st.mean(d) + half:+.1f}]")
        out.append("valkl5 − cse=1, points, 95% t-interval over the seeds: " + "; ".join(parts))
    if minilm_terms is not None:
        fits = [json.loads(line) for line in minilm_terms.read_text().splitlines()]
        out += ["", "MiniLM: the α (grid value, before the (m − k)/m correction) each rule picks, per fit",
                f"{'fit':<24}" + "".join(f"{r:>9}" for r in RULES if not r.startswith(("fixed", "val")))]
        for f in fits:
            T, c = torch.tensor(f["terms"], dtype=torch.float64), f["candidates"]
            out.append(f"{f.get('label', '?'):<24}" + "".join(f"{c[pick(c, T, r)]:9.2g}" for r in RULES if not r.startswith(("fixed", "val"))))
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=list(NETS), choices=list(NETS))
    ap.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--chunk-size", type=int, default=32)
    ap.add_argument("--scales", nargs="+", default=["global"], choices=["global", "tensor"],
                    help="also sweep the per-tensor scale (rel:α:tensor) for the validated rules")
    ap.add_argument("--labels", default="true", choices=["true", "sampled"], help="the Fisher's labels (damping_table's)")
    ap.add_argument("--out", type=Path, help="the sweep's .json (required unless --analyse)")
    ap.add_argument("--analyse", type=Path, help="print the rules' table from this sweep .json instead of running")
    ap.add_argument("--minilm-terms", type=Path, help="with --analyse: a .jsonl of MiniLM fits (label, candidates, terms)")
    args = ap.parse_args()
    if args.analyse:
        print(analyse(args.analyse, args.minilm_terms))
    elif args.out is None:
        ap.error("--out is required to run the sweep")
    else:
        run(args)


if __name__ == "__main__":
    main()
