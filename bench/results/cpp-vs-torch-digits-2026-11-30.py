# The script behind cpp-vs-torch-digits-2026-11-30.txt (run from /tmp with the repo at /work/main: adjust the sys.path lines).
"""Same gradients, same policy: backend torch (LAPACK float32 inversion, full-block flush) vs auto (cpp)."""
import copy, json, sys, time
from pathlib import Path
sys.path.insert(0, "/work/main/examples"); sys.path.insert(0, "/work/main")
import torch
import damping_table as dt
from obert_kernels import FisherPruner
from obert_kernels.app.demo import accuracy, load_digits_data
from obert_kernels.core.pruner import prunable_weights

def prune(dense, grads, policy, s, settings, backend):
    model = copy.deepcopy(dense)
    p = FisherPruner(prunable_weights(model), damp=policy, backend=backend, verbose=False, **settings)
    for g in grads: p.add_grads(g)
    p.prune(s)
    chosen = getattr(p.damping, "chosen", None)
    return model, chosen

rows = []
for seed in (0, 1, 2):
    data = load_digits_data(seed)
    for net in ("mlp", "cnn"):
        dense = dt.trained(net, data, seed)
        grads = dt.collect(copy.deepcopy(dense), data, "true", dt.NETS[net]["num_grads"], seed)
        for s in (0.7, 0.8, 0.9, 0.95):
            for policy in ("auto", "rel:1e-2:global", "rel:1e-4:global", "1e-6"):
                accs = {}
                for backend in ("torch", "auto"):
                    m, chosen = prune(dense, grads, policy, s, dt.NETS[net], backend)
                    accs[backend] = (accuracy(m, data.x_test, data.y_test), chosen)
                rows.append(dict(seed=seed, net=net, s=s, policy=policy, torch=accs["torch"][0], cpp=accs["auto"][0],
                                 chosen_torch=accs["torch"][1], chosen_cpp=accs["auto"][1]))
                print(json.dumps(rows[-1]), flush=True)
json.dump(rows, open("/tmp/cmp_backend.json", "w"))
d = [r["cpp"] - r["torch"] for r in rows]
print("n", len(d), "mean diff", sum(d) / len(d), "min", min(d), "max", max(d))
