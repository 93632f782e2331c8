"""``ptft pretrain --objective mlm --set cross_document_attention=false``: every training and
evaluation forward gets the rows' documents (``doc_ids``), the summary says attention stays
within each document, and the masked-LM loss falls; the default stays one sequence per row."""

from __future__ import annotations

import json

import pytest

from ptft_fast.cli import main
from ptft_fast.models.encoder import EncoderForMaskedLM

SETS = dict(
    seq_len=64, micro_batch_size=8, eval_batches=2, eval_every=0, save_every=0, plot="false", log_every=5
)


@pytest.mark.parametrize("cross", [None, "false"], ids=["default", "documents"])
def test_mlm_run_keeps_documents_apart_only_when_asked(cross, new_run, capsys, monkeypatch):
    seen = []
    forward = EncoderForMaskedLM.forward

    def spy(self, input_ids, *args, **kw):
        seen.append((self.training, kw.get("doc_ids") is not None))
        return forward(self, input_ids, *args, **kw)

    monkeypatch.setattr(EncoderForMaskedLM, "forward", spy)
    out = new_run("wordpiece")
    sets = {**SETS, "max_steps": 60, **({} if cross is None else {"cross_document_attention": cross})}
    argv = ["pretrain", "--model", "bert-tiny-cpu", "--objective", "mlm", "--out", str(out), "--no-progress"]
    argv += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    capsys.readouterr()
    assert main(argv) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    separated = cross == "false"
    assert {training for training, _ in seen} == {True, False}  # training steps and the evaluation
    assert {has_docs for _, has_docs in seen} == {separated}
    assert summary["rows"]["attention_across_documents"] is not separated
    assert ("attention stays within each document" in printed) is separated
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if r["kind"] == "train"]
    assert sum(train[-3:]) / 3 < sum(train[:3]) / 3 - 0.5  # the masked LM learns
