"""Distillation losses against float64 formulas; the frozen teacher; Trainer on a tiny BERT."""
import pytest
import torch
from torch import nn

from obert_kernels import DistillationLoss, distillation_loss, embedding_loss, frozen_teacher, kd_loss


def _kl_ref(s, t, temp):
    """T²·mean over rows of Σ p_t (log p_t − log p_s), in float64."""
    s, t = s.double() / temp, t.double() / temp
    pt = torch.softmax(t, -1)
    return temp ** 2 * (pt * (torch.log_softmax(t, -1) - torch.log_softmax(s, -1))).sum(-1).mean()


@pytest.mark.parametrize("temp", [1.0, 2.0, 5.5])
def test_kd_loss_matches_float64_kl(seed, temp):
    s, t = torch.randn(7, 11) * 3, torch.randn(7, 11) * 3
    assert kd_loss(s, t, temp).item() == pytest.approx(_kl_ref(s, t, temp).item(), rel=1e-5)
    assert kd_loss(t, t, temp).abs().item() < 1e-6  # student = teacher: no loss


def test_distillation_loss_mixes_task_and_kd_by_hardness(seed):
    s, t, y = torch.randn(9, 5), torch.randn(9, 5), torch.randint(5, (9,))
    task = nn.functional.cross_entropy(s, y)
    for h in (0.0, 0.3, 1.0):
        want = (1 - h) * task.double() + h * _kl_ref(s, t, 2.0)
        assert distillation_loss(s, t, task, hardness=h, temperature=2.0).item() == pytest.approx(want.item(), rel=1e-5)
    with pytest.raises(ValueError, match="pass task_loss"):
        distillation_loss(s, t, None, hardness=0.5)
    with pytest.raises(ValueError, match="hardness"):
        distillation_loss(s, t, task, hardness=1.5)
    with pytest.raises(ValueError, match="do not match"):
        kd_loss(s, t[:, :4])


def test_embedding_losses_match_their_formulas(seed):
    s, t = torch.randn(6, 13, dtype=torch.float64), torch.randn(6, 13, dtype=torch.float64)
    cos = (s * t).sum(-1) / (s.norm(dim=-1) * t.norm(dim=-1))
    assert embedding_loss(s, t, "cosine").item() == pytest.approx((1 - cos).mean().item(), rel=1e-10)
    assert embedding_loss(s, t, "mse").item() == pytest.approx(((s - t) ** 2).mean().item(), rel=1e-10)
    assert embedding_loss(s, 2.5 * s, "cosine").item() == pytest.approx(0.0, abs=1e-12)  # scale-free
    with pytest.raises(ValueError, match="teacher embeddings"):
        embedding_loss(s, t[:, :5])
    with pytest.raises(ValueError, match="kind"):
        embedding_loss(s, t, "l1")


def test_teacher_is_a_frozen_eval_copy_and_gets_no_gradient(seed):
    model = nn.Sequential(nn.Linear(8, 16), nn.Dropout(0.5), nn.ReLU(), nn.Linear(16, 4)).train()
    distill = DistillationLoss(model, forward=lambda m, b: m(b), hardness=1.0, temperature=2.0,
                               task_loss=lambda out, b: out.sum())
    teacher = distill.teacher
    assert teacher is not model and not teacher.training and all(not p.requires_grad for p in teacher.parameters())
    x = torch.randn(32, 8)
    # dropout off in the teacher: the same batch gives the same outputs twice, even after model.train()
    assert torch.equal(distill.teacher_outputs(x), distill.teacher_outputs(x))
    before = [p.clone() for p in teacher.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):
        opt.zero_grad()
        loss = distill(model, x)
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))  # only the student moved


def test_label_free_distillation_and_mismatched_teacher(seed):
    model = nn.Linear(6, 5)
    distill = DistillationLoss(model, forward=lambda m, b: m(b), kind="cosine")
    x = torch.randn(4, 6)
    assert distill(model, x).item() == pytest.approx(0.0, abs=1e-6)  # the dense start: student = teacher
    distill.check(model, x)
    wrong = DistillationLoss(model, forward=lambda m, b: m(b), teacher=nn.Linear(6, 7))
    with pytest.raises(ValueError, match=r"teacher outputs \(4, 7\) do not match the student's \(4, 5\)"):
        wrong.check(model, x)


def test_distillation_trainer_on_a_tiny_bert(seed, tmp_path):
    transformers = pytest.importorskip("transformers", reason="needs the [models] extra (transformers)")
    pytest.importorskip("accelerate", reason="transformers.Trainer needs accelerate ([models] extra)")
    from obert_kernels.integrations.hf_trainer import DistillationTrainer

    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=64, max_position_embeddings=32, num_labels=3)
    model = transformers.BertForSequenceClassification(config)
    gen = torch.Generator().manual_seed(seed)
    data = [{"input_ids": ids, "attention_mask": torch.ones(10, dtype=torch.long), "labels": int(ids[0] % 3)}
            for ids in (torch.randint(1, 64, (10,), generator=gen) for _ in range(32))]
    args = transformers.TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=8,
                                          learning_rate=5e-3, report_to=[], save_strategy="no", use_cpu=True,
                                          disable_tqdm=True, seed=seed)
    trainer = DistillationTrainer(model=model, args=args, train_dataset=data, hardness=0.5, temperature=2.0)
    teacher_before = {k: v.clone() for k, v in trainer.teacher.state_dict().items()}
    batch = {k: torch.stack([torch.as_tensor(d[k]) for d in data[:8]]) for k in data[0]}
    model.eval()
    with torch.no_grad():
        out = model(**batch)
        want = 0.5 * out.loss.double() + 0.5 * _kl_ref(out.logits, trainer.teacher(input_ids=batch["input_ids"],
                                                             attention_mask=batch["attention_mask"]).logits, 2.0)
        got = trainer.compute_loss(model, batch)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    trainer.train()
    assert not trainer.teacher.training
    assert all(torch.equal(teacher_before[k], v) for k, v in trainer.teacher.state_dict().items())
    assert any(not torch.equal(teacher_before[k], v) for k, v in model.state_dict().items() if k in teacher_before)
    assert frozen_teacher(model) is not model
