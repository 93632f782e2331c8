"""The pre-training summary says how the rows were built (documents per row, padding, whether
attention crosses documents), what the eval loss was computed on, and over how many steps the
train loss was averaged; each statement is checked against an independent reading."""

from __future__ import annotations

import json
import re

import pytest
import torch

from ptft_fast.cli import main
from ptft_fast.data.corpus import embedded_corpus
from ptft_fast.data.packing import row_segments
from ptft_fast.data.shards import ShardConfig, TokenShards, write_shards
from ptft_fast.data.tokenizer import TokenizerConfig, train_tokenizer
from ptft_fast.models import from_name
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data import ROW_SEGMENTS, BatchSource
from ptft_fast.train.loop import _eval_lines, rows_summary
from ptft_fast.train.objectives import model_inputs, row_stats

SENTENCES = [s.strip() for doc in embedded_corpus()[:20] for s in doc.split(".") if len(s.split()) >= 3]


@pytest.fixture(scope="module")
def short_docs(tmp_path_factory):
    """kind → shards of short documents (one sentence each), so rows hold several documents."""
    made = {}

    def get(kind: str) -> TokenShards:
        if kind not in made:
            tok = train_tokenizer(SENTENCES, TokenizerConfig(kind=kind, vocab_size=400))
            out = tmp_path_factory.mktemp(f"short-{kind}")
            write_shards(SENTENCES, tok, out, ShardConfig(num_workers=1, progress=False))
            made[kind] = TokenShards(out)
        return made[kind]

    return get


def _batches(objective, shards, n=3, **cfg):
    src = BatchSource(objective, shards, shards.tokenizer(), TrainConfig(objective=objective, **cfg), seed=0)
    return [src.next(8, 48) for _ in range(n)]


def test_row_segments_counts_runs_of_document_ids():
    doc_ids = torch.tensor([[5, 5, 7, 7, 7, 9], [9, 9, 9, 9, 9, 9], [3, 3, 4, -1, -1, -1]]).numpy()
    assert row_segments(doc_ids).tolist() == [3, 1, 2]


def test_clm_document_count_matches_the_unscored_document_starts(short_docs):
    """The packed CLM collator leaves each document's first token unscored: an independent count."""
    for b in _batches("clm", short_docs("bpe")):
        starts = ((b["labels"] == -100) & (b["attention_mask"] == 1)).sum(1)
        assert torch.equal(b[ROW_SEGMENTS], starts)
        assert int(b[ROW_SEGMENTS].max()) >= 2  # rows do hold several documents


def test_mlm_document_count_matches_the_separators(short_docs):
    """MLM rows are [CLS] doc [SEP] doc [SEP] ... [SEP]; separators are never masked."""
    shards = short_docs("wordpiece")
    sep = shards.tokenizer().sep_id
    for b in _batches("mlm", shards):
        for row, n, segments in zip(b["input_ids"], b["attention_mask"].sum(1), b[ROW_SEGMENTS]):
            content = row[1 : int(n) - 1]  # without the collator's [CLS] ... [SEP]
            ends = int((content == sep).sum()) + int(content[-1] != sep)  # the last piece runs on
            assert int(segments) == ends


@pytest.mark.parametrize(
    ("objective", "preset", "kind", "cross", "crosses"),
    [
        ("clm", "gpt-tiny", "bpe", None, False),
        ("prefix-lm", "gpt-tiny", "bpe", None, False),
        ("clm", "gpt-tiny", "bpe", True, True),
        ("prefix-lm", "gpt-tiny", "bpe", True, True),
        ("mlm", "bert-tiny-cpu", "wordpiece", None, True),
        ("mlm", "bert-tiny-cpu", "wordpiece", False, False),
    ],
)
def test_the_attention_statement_is_what_the_model_does(objective, preset, kind, cross, crosses, short_docs):
    """Changing the first document of a row changes the outputs at the second one exactly when the
    summary says attention crosses documents: clm / prefix-lm by default keep each document to
    itself, cross_document_attention=True (and MLM by default) let it see the earlier ones, MLM with
    cross_document_attention=False does not."""
    shards = short_docs(kind)
    tok = shards.tokenizer()
    b = _batches(objective, shards, n=1, **({} if cross is None else {"cross_document_attention": cross}))[0]
    torch.manual_seed(0)
    extra = {"bos_token_id": tok.bos_id, "eos_token_id": tok.eos_id} if preset == "gpt-tiny" else {}
    model = from_name(preset, vocab_size=tok.vocab_size, pad_token_id=tok.pad_id, **extra).eval()
    row = int(torch.nonzero(b[ROW_SEGMENTS] >= 2)[0])
    ids = b["input_ids"][row : row + 1]
    if preset == "gpt-tiny":  # documents end with the end token
        second = int(torch.nonzero(ids[0] == tok.eos_id)[0]) + 1
        first_doc = slice(0, second)
    else:
        second = int(torch.nonzero(ids[0] == tok.sep_id)[0]) + 1
        first_doc = slice(1, second - 1)  # between [CLS] and the first [SEP]
    other = ids.clone()
    other[0, first_doc] = (other[0, first_doc] + 7) % tok.vocab_size
    inputs = {k: v[row : row + 1] for k, v in model_inputs(b).items() if k not in ("labels",)}
    with torch.no_grad():
        a = model(**inputs, return_logits=True).logits[0, second:]
        c = model(**{**inputs, "input_ids": other}, return_logits=True).logits[0, second:]
    assert rows_summary(row_stats(b))["attention_across_documents"] == (not torch.allclose(a, c)) == crosses


def test_row_stats_report_document_boundaries_when_the_batch_carries_them():
    mask = torch.ones(2, 4, dtype=torch.long)
    plain = {"input_ids": mask, "attention_mask": mask}
    assert rows_summary(row_stats(plain))["attention_across_documents"]
    with_bounds = {**plain, "cu_seqlens": torch.tensor([0, 2, 4, 8], dtype=torch.int32)}
    assert not rows_summary(row_stats(with_bounds))["attention_across_documents"]
    padded = {"input_ids": mask, "attention_mask": torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])}
    assert rows_summary(row_stats(padded))["padding_share"] == pytest.approx(0.25)


def _run(out, capsys, *extra):
    sets = {"seq_len": 32, "micro_batch_size": 4, "max_steps": 5, "log_every": 1, "eval_every": 0}
    sets.update(eval_batches=2, save_every=0, plot="false")
    argv = ["pretrain", "--model", "bert-tiny-cpu", "--out", str(out), "--no-progress", *extra]
    argv += [x for k, v in sets.items() for x in ("--set", f"{k}={v}")]
    capsys.readouterr()
    assert main(argv) == 0
    return capsys.readouterr().out, json.loads((out / "summary.json").read_text())


def test_summary_on_held_out_documents(new_run, capsys):
    out = new_run()
    printed, s = _run(out, capsys)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r["kind"] == "train"]
    assert s["train_loss_steps"] == 5 and s["final_train_loss"] == pytest.approx(sum(losses) / 5)
    assert "mean over the last 5 steps of this run" in printed
    held = TokenShards(out / "data" / "eval").num_docs
    tokens = TokenShards(out / "data" / "eval").num_tokens
    want = {"held_out": True, "documents": held, "eval_fraction": 0.05, "rows": 8, "tokens": tokens}
    assert s["eval_data"] == {**want, "positions": 8 * 32}
    assert re.search(
        rf"on {held} held-out documents \(eval_fraction=0.05; 8 rows, [\d,]+ tokens scored", printed
    )
    r = s["rows"]
    assert r["rows"] == 5 * 4 and r["positions_per_row"] == 32 and r["attention_across_documents"]
    assert r["documents_per_row"] >= 1.0 and 0.0 <= r["padding_share"] < 1.0
    assert "documents per row on average" in printed and "attention crosses the documents of a row" in printed
    assert "TRAINING documents" not in printed


def test_summary_says_when_eval_rows_repeat_the_held_out_documents():
    s = {"eval_loss": 2.0, "perplexity": 7.4, "eval_tokens": 300}
    e = {"held_out": True, "documents": 3, "eval_fraction": 0.05, "rows": 128, "tokens": 1483}
    once = _eval_lines({**s, "eval_data": {**e, "positions": 1483}})[0]
    assert "times" not in once
    twice = _eval_lines({**s, "eval_data": {**e, "positions": 128 * 128}})[0]
    assert "the rows read each of their 1,483 tokens ~11 times" in twice


def test_summary_warns_when_eval_uses_training_documents(new_run, run_data, capsys):
    shard_folder = run_data("wordpiece") / "data" / "train"
    printed, s = _run(new_run(name="shards"), capsys, "--data", str(shard_folder))
    assert s["eval_data"]["held_out"] is False
    assert "on TRAINING documents" in printed and "not a held-out score" in printed


def test_summary_of_an_nsp_run_describes_sentence_pairs_not_packed_documents(new_run, capsys):
    printed, s = _run(new_run(), capsys, "--objective", "mlm+nsp")
    assert s["rows"]["layout"] == "sentence_pairs" and s["rows"]["rows"] == 5 * 4
    assert "one sentence pair per row ([CLS] A [SEP] B [SEP]" in printed
    assert "documents packed end to end" not in printed and "documents per row" not in printed
    packed, s = _run(new_run(name="mlm"), capsys)
    assert s["rows"]["layout"] == "packed" and "documents packed end to end" in packed


@pytest.mark.parametrize("cross", [None, False, True])
def test_mlm_batches_carry_documents_only_without_cross_document_attention(cross, short_docs):
    """mlm rows are one sequence by default (and with cross_document_attention=true); with false
    they carry doc_ids (B, T): -1 exactly on padding, and a new document starts only right after
    a [SEP] (the separator the packer appends to each document)."""
    shards = short_docs("wordpiece")
    tok = shards.tokenizer()
    cfg = TrainConfig(objective="mlm", cross_document_attention=cross)
    b = BatchSource("mlm", shards, tok, cfg, seed=7).next(4, 64)
    assert ("doc_ids" in b) == (cross is False)
    if cross is not False:
        return
    doc_ids, mask = b["doc_ids"], b["attention_mask"].bool()
    assert doc_ids.shape == b["input_ids"].shape
    assert torch.equal(doc_ids >= 0, mask)
    # the ids before masking: labels hold the original token where a position was masked
    original = torch.where(b["labels"] != -100, b["labels"], b["input_ids"])
    starts = (doc_ids[:, 1:] != doc_ids[:, :-1]) & mask[:, 1:]
    assert int(starts.sum()) > 0, "short documents pack several to a row"
    assert bool((original[:, :-1][starts] == tok.sep_id).all())
    assert bool((original[:, 0] == tok.cls_id).all())
