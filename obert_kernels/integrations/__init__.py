"""Bridges to the tools users already train and deploy with.

- ``hf_trainer.ObertPruningCallback``: GradualSchedule inside ``transformers.Trainer``
  (needs transformers + accelerate: the ``[models]`` extra).
- ``torch_prune``: masks to and from ``torch.nn.utils.prune`` (``weight_mask`` buffers).
- ``semi_structured``: 2:4 checks on any device, and conversion of 2:4-pruned Linear
  weights with ``torch.sparse.to_sparse_semi_structured`` (CUDA, sparse tensor cores).

Each submodule is imported on its own, so the core install needs none of the extras.
"""
