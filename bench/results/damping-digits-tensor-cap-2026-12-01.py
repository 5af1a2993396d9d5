"""Experiment (issue 12): per-tensor λ with a cap on each tensor's sparsity, on the digits MLP and CNN."""
# run from the repository root: OMP_NUM_THREADS=1 python bench/results/damping-digits-tensor-cap-2026-12-01.py mlp,cnn 0,1,2 obs|joint > OUT.jsonl
import copy, json, sys
from pathlib import Path
ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT)); sys.path.insert(0, str(ROOT / "examples"))
import torch
from damping_table import trained, collect, NETS
from obert_kernels import FisherPruner, magnitude_prune
from obert_kernels.app.demo import accuracy, load_digits_data
from obert_kernels.core.pruner import prunable_weights

POL = [("magnitude", None), ("auto:global", None), ("auto:tensor", None), ("auto:tensor", 0.5), ("auto:tensor", 0.25),
       ("rel:1e-2:tensor", 0.5), ("rel:1e-2:global", None)]
nets = sys.argv[1].split(","); seeds = [int(s) for s in sys.argv[2].split(",")]; update = sys.argv[3]
for seed in seeds:
    data = load_digits_data(seed)
    for net in nets:
        dense = trained(net, data, seed)
        grads = collect(copy.deepcopy(dense), data, "true", NETS[net]["num_grads"], seed)
        for s in (0.7, 0.8, 0.9, 0.95):
            for policy, q in POL:
                model = copy.deepcopy(dense)
                cap = None if q is None else 1 - (1 - s) * q
                extra = ""
                if policy == "magnitude":
                    magnitude_prune(model, s)
                else:
                    p = FisherPruner(prunable_weights(model), damp=policy, update=update, verbose=False,
                                     max_tensor_sparsity=cap, **NETS[net])
                    for g in grads:
                        p.add_grads(g)
                    rep = p.prune(s)
                    extra = getattr(p.damping, "chosen", "")
                    ts = max(t.sparsity for t in rep.tensors.values())
                    extra = f"{extra} max_t={ts:.3f}"
                acc = accuracy(model, data.x_test, data.y_test)
                print(json.dumps({"net": net, "seed": seed, "s": s, "policy": policy, "q": q, "acc": acc, "extra": str(extra)}), flush=True)
