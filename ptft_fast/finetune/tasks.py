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
    entity_scores,
    f1_scores,
    generation_metrics,
    is_entity_scheme,
    regression_metrics,
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


def primary_metric(task: str, labels: list[str] | None = None) -> str:
    """The metric that picks the best epoch: PRIMARY, except entity F1 for tagging with a chunking
    scheme (NER: B-/I-... tags), as CoNLL scores it."""
    if task == "tok" and labels and is_entity_scheme(labels):
        return "f1"
    return PRIMARY[task]


def _logits(model: nn.Module, data: dict, batch_size: int) -> list[torch.Tensor]:
    out = []
    for b in batches(data, batch_size, shuffle=False):
        b = {k: v for k, v in b.items() if k != "labels"}
        out.append(model(**b)["logits"])
    return out


def cls_data(tokenizer, examples: list[Example], labels: list[str], max_length: int) -> dict:
    return encode_sequences(tokenizer, examples, max_length, {c: i for i, c in enumerate(labels)})


def predict_cls(model, data: dict, batch_size: int = 64) -> list[int]:
    """Class index per example (argmax of the logits)."""
    return torch.cat([lg.argmax(-1) for lg in _logits(model, data, batch_size)]).tolist()


def evaluate_cls(model, data: dict, batch_size: int = 64) -> dict[str, float]:
    return classification_metrics(predict_cls(model, data, batch_size), data["labels"].tolist())


def reg_data(tokenizer, examples: list[Example], max_length: int) -> dict:
    return encode_sequences(tokenizer, examples, max_length)


def predict_reg(model, data: dict, batch_size: int = 64) -> list[float]:
    return torch.cat(_logits(model, data, batch_size)).tolist()


def score_reg(pred: list[float], gold: list[float]) -> dict[str, float]:
    m = regression_metrics(pred, gold)
    return {"pearson": m["pearson"], "spearman": m["spearman"], "mse": m["mse"]}


def evaluate_reg(model, data: dict, batch_size: int = 64) -> dict[str, float]:
    return score_reg(predict_reg(model, data, batch_size), data["labels"].tolist())


def tok_data(tokenizer, examples: list[TokenExample], tags: list[str], max_length: int) -> dict:
    return encode_tokens(tokenizer, examples, max_length, {t: i for i, t in enumerate(tags)})


def _word_rows(labels: torch.Tensor, values: torch.Tensor) -> list[list[int]]:
    """Per row, ``values`` at the labeled (first sub-word) positions, in word order."""
    keep = labels != IGNORE_INDEX
    return [v[k].tolist() for v, k in zip(values, keep)]


def predict_tok(model, data: dict, batch_size: int = 64) -> list[list[int]]:
    """Tag index per word (its first sub-word's argmax), one list per sentence; words cut by
    truncation are absent."""
    out = []
    for lg, b in zip(_logits(model, data, batch_size), batches(data, batch_size, shuffle=False)):
        out += _word_rows(b["labels"], lg.argmax(-1))
    return out


def score_tok(
    pred: list[list[int]], gold: list[list[int]], tags: list[str] | None = None
) -> dict[str, float]:
    """Entity-level P/R/F1 and token accuracy (seqeval, CoNLL's convention) when ``tags`` follow a
    chunking scheme; else token accuracy and macro/micro F1 over tags."""
    if tags is not None and is_entity_scheme(tags):
        return entity_scores([[tags[i] for i in p] for p in pred], [[tags[i] for i in g] for g in gold])
    flat_p, flat_g = [i for p in pred for i in p], [i for g in gold for i in g]
    acc = sum(p == g for p, g in zip(flat_p, flat_g)) / max(len(flat_g), 1)
    return {"accuracy": acc, **f1_scores(flat_p, flat_g)}


def evaluate_tok(model, data: dict, tags: list[str] | None = None, batch_size: int = 64) -> dict[str, float]:
    """Scores over words (first sub-word positions): see :func:`score_tok`."""
    gold = _word_rows(data["labels"], data["labels"])
    return score_tok(predict_tok(model, data, batch_size), gold, tags)


class QAData:
    """Features (windows) of QA examples plus what decoding needs."""

    def __init__(self, tokenizer, examples: list[QAExample], max_length: int = 384, doc_stride: int = 128):
        self.examples = examples
        self.features = qa_features(tokenizer, examples, max_length, doc_stride)
        self.tensors = qa_batch(self.features, tokenizer.pad_id or 0)


def predict_qa(
    model, qa: QAData, batch_size: int = 32, n_best: int = 20, max_answer_len: int = 30
) -> list[str]:
    """Answer text per question (best span over all of its context windows)."""
    logits = []
    for lg in _logits(model, qa.tensors, batch_size):
        logits += list(lg)
    return decode_spans(qa.examples, qa.features, logits, n_best, max_answer_len)


def evaluate_qa(model, qa: QAData, batch_size: int = 32, n_best: int = 20, max_answer_len: int = 30):
    answers = predict_qa(model, qa, batch_size, n_best, max_answer_len)
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


def predict_seq2seq(
    model, tokenizer, data: dict, batch_size: int = 32, max_new_tokens: int = 32
) -> list[str]:
    """Greedy generation per source row of ``data`` (labels, if any, unused)."""
    from ptft_fast.generate import GenerationConfig, generate

    eos = tokenizer.eos_id if tokenizer.eos_id is not None else tokenizer.sep_id
    cfg = GenerationConfig(
        max_new_tokens=max_new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_id or 0
    )
    preds = []
    for b in batches({k: v for k, v in data.items() if k != "labels"}, batch_size, shuffle=False):
        out = generate(model, b["input_ids"], b["attention_mask"], cfg)
        preds += [tokenizer.decode(row.tolist()) for row in out]
    return preds


def evaluate_seq2seq(
    model, tokenizer, examples: list[Example], data: dict, batch_size: int = 32, max_new_tokens: int = 32
):
    """ROUGE-1/2/L, BLEU and exact match of greedy generations against the examples' labels."""
    preds = predict_seq2seq(model, tokenizer, data, batch_size, max_new_tokens)
    return generation_metrics(preds, [str(e.label) for e in examples])
