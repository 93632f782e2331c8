"""Instruction tuning (response-only loss, packing without cross-record attention) and ICL."""

from __future__ import annotations

import torch

from ptft_fast.finetune.icl import build_prompt, evaluate_icl, verbalizer_logprobs
from ptft_fast.finetune.instruct import (
    encode_record,
    flatten_rows,
    pack,
    packed_batch,
    packed_causal_lm_loss,
    packed_rows,
    rows_loss,
)
from ptft_fast.finetune.readers import Example
from ptft_fast.models import from_name
from ptft_fast.models.heads import IGNORE_INDEX

RECORDS = [
    ("Name a module for paths.", "pathlib"),
    ("What does json do?", "It encodes and decodes JSON."),
    ("Say hi.", "hi"),
    ("List two numbers.", "one two"),
]


def gpt(vocab):
    torch.manual_seed(0)
    return from_name("gpt-tiny", vocab_size=vocab, dropout=0.0, attention_dropout=0.0)


def test_loss_only_on_response(ft_bpe):
    r = encode_record(ft_bpe, "Say hi.", "hi")
    n_prompt = len(ft_bpe.encode("### Instruction:\nSay hi.\n\n### Response:\n"))
    assert all(t == IGNORE_INDEX for t in r.labels[:n_prompt])
    assert r.labels[n_prompt:] == r.ids[n_prompt:] and r.ids[-1] == ft_bpe.eos_id


def test_packed_loss_equals_separate_records(ft_bpe):
    model = gpt(ft_bpe.vocab_size)
    recs = [encode_record(ft_bpe, p, r) for p, r in RECORDS]
    groups = pack(recs, 80)
    assert len(groups) < len(recs)  # short records share rows
    batch = packed_batch(groups)
    packed = packed_causal_lm_loss(model, batch)
    total, count = 0.0, 0
    for g in groups:
        for r in g:
            n = sum(t != IGNORE_INDEX for t in r.labels[1:])
            total += float(model(torch.tensor([r.ids]), labels=torch.tensor([r.labels])).loss) * n
            count += n
    torch.testing.assert_close(packed, torch.tensor(total / count), atol=1e-5, rtol=1e-5)
    packed.backward()
    assert model.embed_tokens.weight.grad is not None


def test_packed_rows_flatten_back_to_the_flat_packing(ft_bpe):
    """Row layout for the loop (B, L) → same flat tensors and loss as packed_batch; a batch of a
    subset of rows keeps its records apart (boundaries from segment ids and rows)."""
    model = gpt(ft_bpe.vocab_size)
    groups = pack([encode_record(ft_bpe, p, r) for p, r in RECORDS], 40)
    rows = packed_rows(groups, pad_id=0)
    assert rows["input_ids"].shape[0] == len(groups) and (rows["segment_ids"] == 0).any()  # padding
    flat, ref = flatten_rows(rows), packed_batch(groups)
    assert flat.keys() == ref.keys()
    for k in ref:
        torch.testing.assert_close(flat[k], ref[k])
    torch.testing.assert_close(rows_loss(model, rows), packed_causal_lm_loss(model, ref))
    sub = {k: v[1:] for k, v in rows.items()}
    torch.testing.assert_close(flatten_rows(sub)["cu_seqlens"], packed_batch(groups[1:])["cu_seqlens"])


def test_verbalizer_scores_match_manual_logprobs(ft_bpe):
    model = gpt(ft_bpe.vocab_size).eval()
    q = Example("reads a file", None, "io")
    prompt = build_prompt(q, [Example("parses json", None, "json")], {"io": "io", "json": "json"})
    assert prompt == "Text: parses json\nLabel: json\n\nText: reads a file\nLabel:"
    scores = verbalizer_logprobs(model, ft_bpe, prompt, ["io", "json"], 128)
    for s, word in zip(scores, ["io", "json"]):
        p, o = ft_bpe.encode(prompt), ft_bpe.encode(" " + word)
        lp = model(torch.tensor([p + o])).logits[0].log_softmax(-1)
        manual = sum(lp[len(p) - 1 + j, t] for j, t in enumerate(o))
        torch.testing.assert_close(s, manual, atol=1e-4, rtol=1e-5)


def test_icl_accuracy_per_k(ft_bpe):
    model = gpt(ft_bpe.vocab_size)
    demos = [Example(f"text {i}", None, ["a", "b"][i % 2]) for i in range(6)]
    acc = evaluate_icl(model, ft_bpe, demos, demos[:4], ["a", "b"], [0, 1, 4])
    assert set(acc) == {0, 1, 4} and all(0.0 <= v <= 1.0 for v in acc.values())
