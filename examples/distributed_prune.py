"""Prune with the Fisher blocks sharded over ranks; run with torchrun.

    torchrun --nproc_per_node=2 examples/distributed_prune.py            # CPUs (gloo)
    torchrun --nproc_per_node=4 examples/distributed_prune.py --nccl     # one GPU per rank

Every rank runs the same loop: backward on its own batch, gradients all-reduced (as DDP
does), ``add_grads``; then ``prune``. Each rank holds only its share of F⁻¹, and all
ranks end with identical weights and masks (checked at the end).
"""
import argparse
import os

import torch
import torch.distributed as dist
from torch import nn

from obert_kernels import FisherPruner


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--nccl", action="store_true", help="NCCL on one GPU per rank (default: gloo on CPUs)")
    ap.add_argument("--sparsity", type=float, default=0.8)
    ap.add_argument("--num-grads", type=int, default=64)
    args = ap.parse_args()
    dist.init_process_group("nccl" if args.nccl else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if args.nccl else torch.device("cpu")
    if args.nccl:
        torch.cuda.set_device(device)

    torch.manual_seed(0)  # the same model on every rank
    model = nn.Sequential(nn.Linear(256, 512), nn.GELU(), nn.Linear(512, 256), nn.GELU(), nn.Linear(256, 10)).to(device)
    pruner = FisherPruner(model, block_size=64, num_grads=args.num_grads, damp=1e-5, verbose=rank == 0)
    gen = torch.Generator().manual_seed(1 + rank)  # each rank sees its own data
    for _ in range(args.num_grads):
        x, y = torch.randn(16, 256, generator=gen).to(device), torch.randint(0, 10, (16,), generator=gen).to(device)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        for p in model.parameters():  # what DDP does after backward
            dist.all_reduce(p.grad)
            p.grad /= world
        pruner.add_grads()
    report = pruner.prune(args.sparsity)

    digest = torch.stack([p.detach().double().sum() for p in model.parameters()]).cpu()
    digests = [torch.zeros_like(digest) for _ in range(world)]
    dist.all_gather(digests, digest.to(device) if args.nccl else digest)
    same = all(torch.equal(d.cpu(), digests[0].cpu()) for d in digests)
    print(f"rank {rank}: holds {pruner.local_num_blocks} of {pruner.num_blocks} Fisher blocks; "
          f"weights identical on all ranks: {same}")
    if rank == 0:
        print(report)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
