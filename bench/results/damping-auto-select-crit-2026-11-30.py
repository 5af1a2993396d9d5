"""Does auto's held-out criterion tell the scales apart? accuracy and the chosen α's criterion, per policy."""
import copy, sys
sys.path.insert(0, "/work/main/examples")
import torch
import damping_table as dt
from obert_kernels import FisherPruner
torch.set_num_threads(1)
for seed in (0, 1, 2):
    data = dt.load_digits_data(seed)
    for net in ("mlp", "cnn"):
        dense = dt.trained(net, data, seed)
        grads = dt.collect(copy.deepcopy(dense), data, "true", 256, seed)
        for s in (0.8, 0.9):
            out = []
            for policy in ("auto", "auto:tensor"):
                model = copy.deepcopy(dense)
                p = FisherPruner(dt.prunable_weights(model), damp=policy, chunk_size=32, update="obs", verbose=False, **dt.NETS[net])
                for g in grads: p.add_grads(g)
                p.prune(s)
                d = p.damping
                a = d.chosen * 256 / (256 - 32)
                best = min(d.scores.values())
                out.append(f"{policy}: acc {dt.accuracy(model, data.x_test, data.y_test):.3f} crit(chosen) {d.scores[min(d.scores, key=lambda c: abs(c-a))]:.3e} crit(min) {best:.3e}")
            print(net, seed, s, " | ".join(out), flush=True)
