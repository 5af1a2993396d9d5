"""Integrations: torch.nn.utils.prune export, 2:4 semi-structured conversion, HF Trainer callback."""
import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from obert_kernels import FisherPruner, GradualSchedule
from obert_kernels.integrations.semi_structured import (
    SemiStructuredNotSupported,
    conversion_reasons,
    is_2to4,
    nm_violations,
    to_semi_structured,
)
from obert_kernels.integrations.torch_prune import export_masks, masks_from_modules


def _pruned_mlp(pattern="unstructured", sparsity=0.6, sizes=(16, 32, 8)):
    model = nn.Sequential(nn.Linear(sizes[0], sizes[1]), nn.ReLU(), nn.Linear(sizes[1], sizes[2]))
    p = FisherPruner(model, block_size=8, num_grads=6, damp="rel:0.01", pattern=pattern, verbose=False)
    for _ in range(6):
        model.zero_grad()
        model(torch.randn(5, sizes[0])).pow(2).sum().backward()
        p.add_grads()
    p.prune(sparsity)
    return model, p


# ---- torch.nn.utils.prune ------------------------------------------------------------
def test_export_masks_to_torch_prune(seed):
    model, p = _pruned_mlp()
    x = torch.randn(3, 16)
    before = model(x)
    done = export_masks(model, p.masks)
    assert done == list(p.masks)
    assert torch_prune.is_pruned(model)
    for name, mask in p.masks.items():
        module = model.get_submodule(name.rsplit(".", 1)[0])
        assert torch.equal(module.weight_mask.bool(), mask)
        assert "weight_orig" in dict(module.named_parameters())
    assert torch.allclose(model(x), before)
    read_back = masks_from_modules(model)
    assert read_back.keys() == p.masks.keys() and all(torch.equal(read_back[k], p.masks[k]) for k in p.masks)
    # training moves weight_orig but the forward weight stays zero where pruned
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(4, 16)).sum().backward()
        opt.step()
    for name, mask in p.masks.items():
        assert torch.all(model.get_submodule(name.rsplit(".", 1)[0]).weight[~mask] == 0)


def test_export_masks_permanent_and_checked(seed):
    model, p = _pruned_mlp()
    bad = dict(p.masks)
    bad["0.weight"] = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="shape"):
        export_masks(model, bad)
    assert not torch_prune.is_pruned(model)  # nothing changed
    with pytest.raises(KeyError, match="no submodule"):
        export_masks(model, {"7.weight": torch.ones(1, dtype=torch.bool)})
    export_masks(model, p.masks, make_permanent=True)
    assert not torch_prune.is_pruned(model)
    assert torch.all(model[0].weight[~p.masks["0.weight"]] == 0)


# ---- 2:4 semi-structured ---------------------------------------------------------------
def test_2to4_pruning_gives_the_semi_structured_pattern(seed):
    model, p = _pruned_mlp(pattern="2:4", sizes=(64, 64, 32))
    for name in p.masks:
        w = model.get_submodule(name.rsplit(".", 1)[0]).weight
        assert is_2to4(w) and nm_violations(w) == 0
    dense = nn.Linear(64, 32)
    assert not is_2to4(dense.weight) and nm_violations(dense.weight) == 32 * 16
    magnitude_like = dense.weight.detach().clone()
    magnitude_like[:, ::2] = 0
    assert is_2to4(magnitude_like)


def test_conversion_on_cpu_says_why(seed):
    model, p = _pruned_mlp(pattern="2:4", sizes=(64, 64, 32))
    reasons = conversion_reasons(model[0].weight)
    assert len(reasons) == 1 and "only on CUDA GPUs" in reasons[0]
    dense_reasons = conversion_reasons(nn.Linear(64, 32).weight)
    assert any("not 2:4" in r for r in dense_reasons)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(SemiStructuredNotSupported, match="only on CUDA GPUs") as info:
        to_semi_structured(model, p.masks)
    assert set(info.value.reasons) == set(p.masks)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])  # nothing converted


@pytest.mark.skipif(not torch.cuda.is_available(), reason="to_sparse_semi_structured needs a CUDA GPU (none here)")
def test_conversion_on_gpu_matches_the_dense_pruned_layer(seed):
    if torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("2:4 sparse tensor cores need compute capability >= 8.0")
    model, p = _pruned_mlp(pattern="2:4", sizes=(128, 256, 128))
    model = model.half().cuda()
    x = torch.randn(64, 128, device="cuda", dtype=torch.half)
    expected = model(x)
    assert to_semi_structured(model, p.masks) == list(p.masks)
    assert type(model[0].weight.data).__name__.startswith("SparseSemiStructuredTensor")
    got = model(x)
    assert ((got - expected).norm() / expected.norm()).item() < 1e-2


# ---- Hugging Face Trainer --------------------------------------------------------------
def test_trainer_callback_reaches_target_sparsity_with_masks_held(seed, tmp_path):
    transformers = pytest.importorskip("transformers", reason="needs the [models] extra (transformers)")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate ([models] extra)")
    from obert_kernels.integrations.hf_models import encoder_weights
    from obert_kernels.integrations.hf_trainer import ObertPruningCallback

    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    gen = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(96):
        ids = torch.randint(1, 64, (12,), generator=gen)
        data.append({"input_ids": ids, "attention_mask": torch.ones(12, dtype=torch.long), "labels": int(ids[0] % 2)})
    params = encoder_weights(model.bert)
    pruner = FisherPruner([(f"bert.{n}", w) for n, w in params], block_size=16, num_grads=4, damp="rel:0.01",
                          verbose=False)
    schedule = GradualSchedule(pruner, final_sparsity=0.7, start_step=4, end_step=24, update_every=5)
    callback = ObertPruningCallback(schedule)
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=36, per_device_train_batch_size=8,
                                          learning_rate=5e-3, weight_decay=0.1, logging_steps=5, report_to=[],
                                          save_strategy="no", use_cpu=True, disable_tqdm=True, seed=seed)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data, callbacks=[callback])
    trainer.train()
    assert [round(r.target_sparsity, 4) for r in callback.reports] == [round(schedule.sparsity_at(t), 4) for t in schedule.pruning_steps()]
    assert pruner.sparsity == pytest.approx(0.7, abs=1e-3)
    # 12 optimizer steps (AdamW with weight decay) ran after the last prune: masks held
    named = dict(model.named_parameters())
    for name, mask in pruner.masks.items():
        assert torch.all(named[name][~mask] == 0), name
    kept = sum(int((named[n][m] != 0).sum()) for n, m in pruner.masks.items())
    assert kept == pytest.approx(0.3 * sum(m.numel() for m in pruner.masks.values()), rel=0.01)
    assert any("obert/sparsity" in entry for entry in trainer.state.log_history)
