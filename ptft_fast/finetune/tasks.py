"""Per-task data preparation and evaluation used by ``ptft finetune`` and the scripts.

Each ``*_data`` returns a dict of (N, ...) tensors for ``loop.train``; each ``evaluate_*``
returns a dict of metrics (the first key is the one to select the best epoch by)."""

from __future__ import annotations

import torch
from torch import nn

from ptft_fast.finetune.encode import decode_spans, encode_sequences, encode_tokens, qa_batch, qa_features
from ptft_fast.finetune.loop import batches
from ptft_fast.finetune.metrics import (
    classification_metrics,
    f1_scores,
    regression_metrics,
    rouge_l,
    squad_em_f1,
)
from ptft_fast.finetune.readers import Example, QAExample, TokenExample
from ptft_fast.models.heads import IGNORE_INDEX

PRIMARY = {
    "cls": "accuracy",
    "reg": "pearson",
    "tok": "accuracy",
    "qa": "f1",
    "seq2seq": "rouge_l",
    "instruct": "rouge_l",
}


def _logits(model: nn.Module, data: dict, batch_size: int) -> list[torch.Tensor]:
    out = []
    for b in batches(data, batch_size, shuffle=False):
        b = {k: v for k, v in b.items() if k != "labels"}
        out.append(model(**b)["logits"])
    return out


def cls_data(tokenizer, examples: list[Example], labels: list[str], max_length: int) -> dict:
    return encode_sequences(tokenizer, examples, max_length, {c: i for i, c in enumerate(labels)})


def evaluate_cls(model, data: dict, batch_size: int = 64) -> dict[str, float]:
    pred = torch.cat([lg.argmax(-1) for lg in _logits(model, data, batch_size)]).tolist()
    return classification_metrics(pred, data["labels"].tolist())


def reg_data(tokenizer, examples: list[Example], max_length: int) -> dict:
    return encode_sequences(tokenizer, examples, max_length)


def evaluate_reg(model, data: dict, batch_size: int = 64) -> dict[str, float]:
    pred = torch.cat(_logits(model, data, batch_size)).tolist()
    m = regression_metrics(pred, data["labels"].tolist())
    return {"pearson": m["pearson"], "spearman": m["spearman"], "mse": m["mse"]}


def tok_data(tokenizer, examples: list[TokenExample], tags: list[str], max_length: int) -> dict:
    return encode_tokens(tokenizer, examples, max_length, {t: i for i, t in enumerate(tags)})


def evaluate_tok(model, data: dict, batch_size: int = 64) -> dict[str, float]:
    """Accuracy and F1 over first sub-word positions (the labeled ones)."""
    pred, gold = [], []
    for lg, b in zip(_logits(model, data, batch_size), batches(data, batch_size, shuffle=False)):
        keep = b["labels"] != IGNORE_INDEX
        pred += lg.argmax(-1)[keep].tolist()
        gold += b["labels"][keep].tolist()
    acc = sum(p == g for p, g in zip(pred, gold)) / max(len(gold), 1)
    return {"accuracy": acc, **f1_scores(pred, gold)}


class QAData:
    """Features (windows) of QA examples plus what decoding needs."""

    def __init__(self, tokenizer, examples: list[QAExample], max_length: int = 384, doc_stride: int = 128):
        self.examples = examples
        self.features = qa_features(tokenizer, examples, max_length, doc_stride)
        self.tensors = qa_batch(self.features, tokenizer.pad_id or 0)


def evaluate_qa(model, qa: QAData, batch_size: int = 32, n_best: int = 20, max_answer_len: int = 30):
    logits = []
    for lg in _logits(model, qa.tensors, batch_size):
        logits += list(lg)
    answers = decode_spans(qa.examples, qa.features, logits, n_best, max_answer_len)
    golds = [[a["text"] for a in ex.answers] or [""] for ex in qa.examples]
    return squad_em_f1(answers, golds)


def seq2seq_data(tokenizer, examples: list[Example], max_length: int, max_target_length: int = 64) -> dict:
    """Source = text, target = label (a string); labels padded with IGNORE_INDEX, ending in eos."""
    src = tokenizer([e.text for e in examples], truncation=True, max_length=max_length, padding=True)
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id
    tgt = [
        tokenizer.encode(str(e.label))[: max_target_length - 1] + ([eos] if eos is not None else [])
        for e in examples
    ]
    t = max(len(r) for r in tgt)
    labels = torch.tensor([r + [IGNORE_INDEX] * (t - len(r)) for r in tgt], dtype=torch.long)
    return {"input_ids": src["input_ids"], "attention_mask": src["attention_mask"], "labels": labels}


def evaluate_seq2seq(
    model, tokenizer, examples: list[Example], data: dict, batch_size: int = 32, max_new_tokens: int = 32
):
    from ptft_fast.generate import GenerationConfig, generate

    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_id or 0
    )
    preds = []
    for b in batches({k: v for k, v in data.items() if k != "labels"}, batch_size, shuffle=False):
        out = generate(model, b["input_ids"], b["attention_mask"], cfg)
        preds += [tokenizer.decode(row.tolist()) for row in out]
    golds = [str(e.label) for e in examples]
    return {
        "rouge_l": rouge_l(preds, golds),
        "exact_match": sum(p.strip() == g.strip() for p, g in zip(preds, golds)) / len(golds),
    }
