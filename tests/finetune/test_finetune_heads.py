"""Task heads per family, pooling, PEFT keeps the head trainable, a short fine-tuning run."""

from __future__ import annotations

import pytest
import torch

from ptft_fast.finetune import FinetuneConfig, TaskModel, docstring_task, train
from ptft_fast.finetune.heads import last_token_index
from ptft_fast.finetune.tasks import cls_data, evaluate_cls
from ptft_fast.models import from_name
from ptft_fast.peft import LoraConfig, get_peft_model, param_report


def test_last_token_index_left_and_right_padding():
    mask = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(mask).tolist() == [2, 3, 3]


@pytest.mark.parametrize("name", ["bert-tiny-cpu", "gpt-tiny", "bart-tiny"])
@pytest.mark.parametrize("task", ["cls", "reg", "tok", "qa"])
def test_heads_shapes_and_padding_invariance(name, task):
    torch.manual_seed(0)
    m = TaskModel(from_name(name, dropout=0.0, attention_dropout=0.0), task, num_labels=3).eval()
    ids = torch.randint(5, 1000, (2, 8))
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    labels = {
        "cls": torch.tensor([0, 2]),
        "reg": torch.tensor([0.5, -1.0]),
        "tok": torch.randint(0, 3, (2, 8)),
        "qa": torch.tensor([[1, 2], [0, 0]]),
    }[task]
    out = m(ids, mask, labels=labels)
    shape = {"cls": (2, 3), "reg": (2,), "tok": (2, 8, 3), "qa": (2, 8, 2)}[task]
    assert out["logits"].shape == shape and out["loss"].ndim == 0
    # the padded row's prediction does not depend on what its padding holds
    ids2 = ids.clone()
    ids2[1, 5:] = 7
    other = m(ids2, mask)["logits"]
    if task in ("cls", "reg"):
        torch.testing.assert_close(other[1], out["logits"][1])
    elif name != "bart-tiny" or task == "tok":
        torch.testing.assert_close(other[1, :5], out["logits"][1, :5])


@pytest.mark.parametrize("name", ["bert-tiny-cpu", "gpt-tiny"])
def test_mean_pooling_is_masked_mean_into_a_bare_classifier(name):
    torch.manual_seed(0)
    m = TaskModel(from_name(name, dropout=0.0, attention_dropout=0.0), "cls", 4, pooling="mean").eval()
    assert [type(x).__name__ for x in m.head] == ["Dropout", "Linear"]  # no pooler parameters
    ids = torch.randint(5, 1000, (3, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    mask[2, 2:] = 0
    h = m.hidden(ids, mask)
    want = torch.stack([h[i, : int(mask[i].sum())].mean(0) for i in range(3)]) @ m.head[1].weight.T
    torch.testing.assert_close(m(ids, mask)["logits"], want + m.head[1].bias)
    with pytest.raises(ValueError, match="pooling"):
        TaskModel(from_name(name), "cls", 2, pooling="max")


def test_t5_points_to_text_to_text():
    with pytest.raises(ValueError, match="seq2seq"):
        TaskModel(from_name("t5-tiny"), "cls", 2)


def test_lora_task_model_trains_head_and_adapter(ft_wordpiece):
    torch.manual_seed(0)
    m = TaskModel(from_name("bert-tiny-cpu", vocab_size=ft_wordpiece.vocab_size), "cls", 6)
    get_peft_model(m, "lora", LoraConfig(r=8, alpha=16))
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert any(n.startswith("head.") for n in names) and any("lora_A" in n for n in names)
    assert param_report(m).percent < 10


@pytest.mark.slow
def test_short_finetune_beats_chance_on_embedded_task(ft_wordpiece):
    tr, ev, labels = docstring_task()
    torch.manual_seed(0)
    model = TaskModel(from_name("bert-tiny-cpu", vocab_size=ft_wordpiece.vocab_size), "cls", len(labels))
    train_data = cls_data(ft_wordpiece, tr, labels, 64)
    eval_data = cls_data(ft_wordpiece, ev, labels, 64)
    saved = []
    hist = train(
        model,
        train_data,
        lambda m: evaluate_cls(m, eval_data),
        FinetuneConfig(epochs=3, batch_size=32, lr=2e-3, progress=False),
        metric="accuracy",
        on_best=lambda m, row: saved.append(row["epoch"]),
    )
    assert hist.epochs[-1]["train_loss"] < hist.epochs[0]["train_loss"]
    majority = max(sum(e.label == c for e in ev) for c in labels) / len(ev)
    assert hist.best["accuracy"] > majority + 0.05
    assert saved and saved[-1] == hist.best["epoch"]


def test_loop_evaluates_every_k_epochs_and_the_last():
    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(2, 1)

        def forward(self, x, labels):
            return {"loss": torch.nn.functional.mse_loss(self.w(x).squeeze(-1), labels)}

    data = {"x": torch.randn(8, 2), "labels": torch.randn(8)}
    seen = []

    def evaluate(m):
        seen.append(1)
        return {"loss": float(m(**data)["loss"])}

    cfg = FinetuneConfig(epochs=7, batch_size=4, lr=1e-2, progress=False, eval_every=3)
    hist = train(Toy(), data, evaluate, cfg, metric="loss", higher_is_better=False)
    assert [r["epoch"] for r in hist.epochs] == [3, 6, 7] and len(seen) == 3
