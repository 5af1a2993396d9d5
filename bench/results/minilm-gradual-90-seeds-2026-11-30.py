import json, math, torch
def rows(p): return {r["method"].split()[0]: r for r in json.load(open(p))["rows"] if r["sparsity"] == 0.9}
def iv(a, b, k):
    d = torch.tensor(a[k], dtype=torch.float64) - torch.tensor(b[k], dtype=torch.float64)
    h = 1.96 * d.std().item() / d.numel() ** 0.5; return d.mean().item(), h
runs = {0: "bench/results/minilm-gradual-onecmd-2026-11-30.json",
        1: "bench/results/minilm-gradual-90-seed1-2026-11-30.json", 2: "bench/results/minilm-gradual-90-seed2-2026-11-30.json"}
dc, dn = [], []
for s, p in runs.items():
    r = rows(p); g, o = r["gradual"], r["one-shot"]
    c, ch = iv(g, o, "cosine_each"); n, nh = iv(g, o, "nn_same")
    dc.append(c); dn.append(n)
    print(f"seed {s}: gradual {g['mean_cosine']:.4f}/{g['nn_agreement']:.3f} one-shot {o['mean_cosine']:.4f}/{o['nn_agreement']:.3f}: "
          f"cos {c:+.4f} [{c-ch:+.4f}, {c+ch:+.4f}] NN {n:+.4f} [{n-nh:+.4f}, {n+nh:+.4f}]")
t = 4.303
for name, d in (("cos", dc), ("NN", dn)):
    m = sum(d) / len(d); sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    print(f"over the 3 seeds, {name}: mean {m:+.4f}, 95% t-interval [{m - t*sd/math.sqrt(3):+.4f}, {m + t*sd/math.sqrt(3):+.4f}]")
