"""Turn task examples into model inputs: sequence (pair) batches, first-subword token labels,
QA features with a doc stride, and n-best span decoding back to answer text."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ptft_fast.finetune.readers import Example, QAExample, TokenExample
from ptft_fast.models.heads import IGNORE_INDEX


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    t = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (t - len(r)) for r in rows], dtype=torch.long)


def encode_sequences(tokenizer, examples: list[Example], max_length: int, label_ids=None) -> dict:
    """→ input_ids, token_type_ids, attention_mask (N, T) right-padded; labels (N,) when the
    examples have labels (class index via ``label_ids``, else float)."""
    texts = [e.text for e in examples]
    pairs = [e.text_pair for e in examples] if examples[0].text_pair is not None else None
    batch = tokenizer(texts, pairs, truncation=True, max_length=max_length, padding=True)
    if examples[0].label is not None:
        if label_ids is not None:
            batch["labels"] = torch.tensor([label_ids[e.label] for e in examples], dtype=torch.long)
        else:
            batch["labels"] = torch.tensor([float(e.label) for e in examples])
    return batch


def encode_tokens(tokenizer, examples: list[TokenExample], max_length: int, tag_ids: dict[str, int]) -> dict:
    """Pre-tokenized words → sub-words; each word's first sub-word carries its tag, the other
    sub-words and special tokens get IGNORE_INDEX. Truncation drops trailing words' labels."""
    tok = tokenizer.backend
    tok.enable_truncation(max_length)
    try:
        encs = [tok.encode(e.words, is_pretokenized=True, add_special_tokens=True) for e in examples]
    finally:
        tok.no_truncation()
    ids, labels = [], []
    for e, enc in zip(examples, encs):
        row, prev = [], None
        for w in enc.word_ids:
            row.append(IGNORE_INDEX if w is None or w == prev else tag_ids[e.tags[w]])
            prev = w
        ids.append(enc.ids)
        labels.append(row)
    input_ids = _pad(ids, tokenizer.pad_id or 0)
    mask = _pad([[1] * len(r) for r in ids], 0)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": _pad(labels, IGNORE_INDEX)}


@dataclass
class QAFeature:
    example: int  # index into the example list
    input_ids: list[int]
    offsets: list[tuple[int, int] | None]  # character span in the context, None outside it
    start: int = 0  # answer token positions (0 = no answer in this window)
    end: int = 0


def qa_features(
    tokenizer, examples: list[QAExample], max_length: int = 384, doc_stride: int = 128
) -> list[QAFeature]:
    """[CLS] question [SEP] context-window [SEP]; windows overlap by ``doc_stride`` tokens."""
    cls = tokenizer.cls_id if tokenizer.cls_id is not None else tokenizer.bos_id
    sep = tokenizer.sep_id if tokenizer.sep_id is not None else tokenizer.eos_id
    if cls is None or sep is None:
        raise ValueError("qa_features: the tokenizer needs cls/sep (or bos/eos) tokens")
    feats = []
    for i, ex in enumerate(examples):
        q = tokenizer.encode(ex.question)[: max_length // 2]
        enc = tokenizer.backend.encode(ex.context, add_special_tokens=False)
        window = max_length - len(q) - 3
        if window <= doc_stride:
            raise ValueError(
                f"qa_features: max_length={max_length} leaves {window} context tokens <= doc_stride={doc_stride}"
            )
        start = 0
        while True:
            ctx = range(start, min(start + window, len(enc.ids)))
            ids = [cls, *q, sep, *(enc.ids[j] for j in ctx), sep]
            offsets = [None] * (len(q) + 2) + [enc.offsets[j] for j in ctx] + [None]
            f = QAFeature(i, ids, offsets)
            if ex.answers:
                a = ex.answers[0]
                cs, ce = a["answer_start"], a["answer_start"] + len(a["text"])
                toks = [k for k, o in enumerate(offsets) if o is not None and o[0] < ce and o[1] > cs]
                if toks and offsets[toks[0]][0] <= cs and offsets[toks[-1]][1] >= ce:
                    f.start, f.end = toks[0], toks[-1]
            feats.append(f)
            if ctx.stop >= len(enc.ids):
                break
            start += window - doc_stride
    return feats


def qa_batch(feats: list[QAFeature], pad_id: int) -> dict:
    ids = _pad([f.input_ids for f in feats], pad_id)
    return {
        "input_ids": ids,
        "attention_mask": _pad([[1] * len(f.input_ids) for f in feats], 0),
        "labels": torch.tensor([[f.start, f.end] for f in feats], dtype=torch.long),
    }


def decode_spans(
    examples: list[QAExample],
    feats: list[QAFeature],
    logits: torch.Tensor,
    n_best: int = 20,
    max_answer_len: int = 30,
) -> list[str]:
    """logits: (F, T, 2) start/end scores per feature → best answer text per example (n-best over
    start/end pairs in the context with start <= end < start + max_answer_len, all windows)."""
    best: dict[int, tuple[float, str]] = {}
    for f, lg in zip(feats, logits):
        s_log, e_log = lg[:, 0], lg[:, 1]
        n = min(n_best, s_log.shape[0])
        starts, ends = s_log.topk(n).indices.tolist(), e_log.topk(n).indices.tolist()
        ctx = examples[f.example].context
        for s in starts:
            for e in ends:
                if s >= len(f.offsets) or e >= len(f.offsets) or f.offsets[s] is None or f.offsets[e] is None:
                    continue
                if e < s or e - s + 1 > max_answer_len:
                    continue
                score = float(s_log[s] + e_log[e])
                if f.example not in best or score > best[f.example][0]:
                    best[f.example] = (score, ctx[f.offsets[s][0] : f.offsets[e][1]])
    return [best.get(i, (0.0, ""))[1] for i in range(len(examples))]
