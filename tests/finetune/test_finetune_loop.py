"""The fine-tuning loop on the pre-training loop's machinery: gradient accumulation gives the whole
batch's update, --pack gives the padded forward's logits and loss, precision and gradient
checkpointing reach the model, evaluation every N steps with early stopping, --max-steps."""

from __future__ import annotations

import pytest
import torch

import ptft_fast.models.blocks as blocks
from ptft_fast.finetune.heads import TaskModel
from ptft_fast.finetune.loop import FinetuneConfig, train
from ptft_fast.finetune.packed import pack_examples, packed_loss, position_offset
from ptft_fast.models import from_name


def bert_task(task="cls", arch="bert-tiny-cpu", pooling="mean", seed=0):
    torch.manual_seed(seed)
    backbone = from_name(arch, vocab_size=60, dropout=0.0, attention_dropout=0.0, pad_token_id=0)
    return TaskModel(backbone, task, 3, dropout=0.0, pooling=pooling)


def ragged_data(n=12, seed=1, reg=False):
    """Examples of 3..9 tokens, right-padded to 9 (micro-batches get different padding)."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(3, 10, (n,), generator=g)
    ids = torch.randint(5, 60, (n, 9), generator=g)
    mask = (torch.arange(9)[None] < lens[:, None]).long()
    labels = torch.randn(n, generator=g) if reg else torch.randint(0, 3, (n,), generator=g)
    return {"input_ids": ids * mask, "attention_mask": mask, "labels": labels}


def trained(model, data, loss_fn=None, **cfg):
    cfg = FinetuneConfig(progress=False, **cfg)
    train(model, data, lambda m: {"accuracy": 0.0}, cfg, metric="accuracy", loss_fn=loss_fn)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def step_grads(model, data, monkeypatch, loss_fn=None, **cfg) -> list[torch.Tensor]:
    """The gradients the optimizer steps with at the first step (AdamW's first update is about
    lr · sign(grad), so weights would amplify rounding noise: grads are the exact comparison)."""
    from ptft_fast.train.strategy import TorchStrategy

    seen = []
    orig = TorchStrategy.step

    def spy(self, step, elapsed_s=0.0):
        if not seen:
            seen.extend(torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in self.params)
        return orig(self, step, elapsed_s)

    monkeypatch.setattr(TorchStrategy, "step", spy)
    trained(model, data, loss_fn, epochs=1, lr=1e-2, **cfg)
    monkeypatch.setattr(TorchStrategy, "step", orig)
    return seen


@pytest.mark.parametrize("task", ["cls", "reg", "tok"])
def test_grad_accum_gives_the_whole_batch_gradient(task, monkeypatch):
    """Micro-batches (here 2, 2, 1, 1 rows with different padding; for tagging different numbers
    of labeled tokens) are weighted by their share of the batch's label units."""
    data = ragged_data(reg=task == "reg")
    if task == "tok":
        g = torch.Generator().manual_seed(3)
        labels = torch.randint(0, 3, (12, 9), generator=g)
        labels[(data["attention_mask"] == 0) | (torch.rand(12, 9, generator=g) < 0.4)] = -100
        data["labels"] = labels
    ref = step_grads(bert_task(task), data, monkeypatch, batch_size=6)
    acc = step_grads(bert_task(task), data, monkeypatch, batch_size=6, grad_accum=4)
    other = step_grads(bert_task(task), data, monkeypatch, batch_size=5)  # another batch: can fail
    for a, r in zip(acc, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-7)
    assert any(not torch.allclose(o, r, rtol=1e-5, atol=1e-7) for o, r in zip(other, ref))


@pytest.mark.parametrize(("arch", "pooling", "task"), [("bert-tiny-cpu", "mean", "cls"),
                         ("bert-tiny-cpu", "auto", "cls"), ("roberta-tiny", "mean", "reg")])  # fmt: skip
def test_packed_forward_equals_padded(arch, pooling, task):
    model = bert_task(task, arch=arch, pooling=pooling).eval()
    data = ragged_data(n=7, reg=task == "reg")
    data["input_ids"][:, 0] = 2  # a first token like [CLS]
    if arch.startswith("bert"):  # sentence pairs (RoBERTa has one token type)
        data["token_type_ids"] = (torch.arange(9)[None] > 2).long().expand(7, 9) * data["attention_mask"]
    padded = model(**data)
    packed = model.forward_packed(**pack_examples(data, position_offset(model)))
    torch.testing.assert_close(packed["logits"], padded["logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed["loss"], padded["loss"], rtol=1e-5, atol=1e-6)
    assert packed_loss(model, data).shape == ()


def test_pack_trains_on_the_packed_forward(monkeypatch):
    """--pack's loss_fn runs the packed forward and gives the padded batch's gradient."""
    data = ragged_data()
    ref = step_grads(bert_task(), data, monkeypatch, batch_size=6)
    calls = []
    forward_packed = TaskModel.forward_packed
    monkeypatch.setattr(
        TaskModel, "forward_packed", lambda *a, **k: calls.append(1) or forward_packed(*a, **k)
    )
    packed = step_grads(bert_task(), data, monkeypatch, batch_size=6, loss_fn=packed_loss)
    assert calls
    for a, r in zip(packed, ref):
        torch.testing.assert_close(a, r, rtol=1e-4, atol=1e-6)


def test_precision_and_gradient_checkpointing_reach_the_model(monkeypatch):
    seen = {"dtypes": set(), "recomputed": 0}
    orig = blocks.checkpoint

    def spy(*a, **k):
        seen["recomputed"] += 1
        return orig(*a, **k)

    monkeypatch.setattr(blocks, "checkpoint", spy)
    model = bert_task()
    model.head.register_forward_hook(lambda m, i, o: seen["dtypes"].add(o.dtype))
    before = trained(bert_task(), ragged_data(), epochs=1, batch_size=6, lr=1e-2)
    assert seen["recomputed"] == 0 and seen["dtypes"] == set()
    after = trained(model, ragged_data(), epochs=1, batch_size=6, lr=1e-2, precision="bf16",
                    gradient_checkpointing=True)  # fmt: skip
    assert seen["recomputed"] > 0 and torch.bfloat16 in seen["dtypes"]
    assert not model.backbone.config.gradient_checkpointing  # put back after training
    assert all(torch.isfinite(v).all() for v in after.values())
    assert any(not torch.equal(after[k], before[k]) for k in before)


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Linear(2, 1)

    def forward(self, x, labels):
        return {"loss": torch.nn.functional.mse_loss(self.w(x).squeeze(-1), labels)}


def test_eval_every_steps_with_early_stopping_and_max_steps():
    data = {"x": torch.randn(8, 2), "labels": torch.randn(8)}
    scores = iter([0.1, 0.5, 0.4, 0.5, 0.3, 0.9, 0.9])  # best at the 2nd evaluation, then 3 worse
    cfg = FinetuneConfig(epochs=50, batch_size=4, lr=1e-2, progress=False, eval_steps=3, patience=3)
    with pytest.warns(UserWarning, match="early stopping at step 15"):
        hist = train(Toy(), data, lambda m: {"acc": next(scores)}, cfg, metric="acc")
    assert [r["step"] for r in hist.epochs] == [3, 6, 9, 12, 15]
    assert [r["epoch"] for r in hist.epochs] == [2, 3, 5, 6, 8]  # 2 steps per epoch
    assert hist.best["step"] == 6 and hist.stopped_early
    cfg = FinetuneConfig(epochs=1, batch_size=4, lr=1e-2, progress=False, max_steps=5)
    hist = train(Toy(), data, lambda m: {"acc": 0.0}, cfg, metric="acc")
    assert [r["step"] for r in hist.epochs] == [2, 4, 5] and not hist.stopped_early  # by epoch + the end


def test_resume_from_every_checkpoint_is_exact(tmp_path):
    """With dropout on (global RNG), accumulation and a data order drawn per epoch: resuming from
    any checkpoint (mid-epoch or at an epoch's end) ends with the uninterrupted run's weights."""
    import shutil

    from ptft_fast.finetune.heads import TaskModel

    def model():
        torch.manual_seed(0)
        return TaskModel(from_name("bert-tiny-cpu", vocab_size=60, pad_token_id=0), "cls", 3)

    def run(out, resume=None):
        cfg = FinetuneConfig(batch_size=4, lr=1e-2, max_steps=9, eval_steps=2, grad_accum=2, keep_last=100,
                             out=str(out), resume=resume, progress=False)  # fmt: skip
        m = model()
        score = lambda m: {"acc": float(m.head[-1].weight.sum())}  # noqa: E731  (a function of the weights)
        hist = train(m, ragged_data(), score, cfg, metric="acc", restore_best=True)
        return m.state_dict(), hist

    want, hist = run(tmp_path / "ref")
    steps = sorted(int(p.name.split("_")[1]) for p in (tmp_path / "ref" / "checkpoints").glob("step_*"))
    assert steps == [2, 4, 6, 8, 9]
    for k in steps[:-1]:
        out = tmp_path / f"from{k}"
        shutil.copytree(tmp_path / "ref", out)
        got, resumed = run(out, resume=str(out / "checkpoints" / f"step_{k:08d}"))
        assert all(torch.equal(got[n], want[n]) for n in want), k
        assert resumed.epochs == hist.epochs and resumed.best == hist.best
