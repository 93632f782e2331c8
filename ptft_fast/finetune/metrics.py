"""Task metrics: accuracy, macro/micro/binary F1, Matthews correlation, Pearson/Spearman, SQuAD
EM/F1 (pure Python / numpy on lists); entity-level NER scores through ``seqeval`` and ROUGE /
BLEU through ``rouge-score`` and ``sacrebleu``, the field's reference implementations."""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Sequence

import numpy as np


def _check(pred: Sequence, gold: Sequence, name: str) -> None:
    if len(pred) != len(gold):
        raise ValueError(f"{name}: predictions and references differ in length ({len(pred)} vs {len(gold)})")
    if len(gold) == 0:
        raise ValueError(f"{name}: no examples")


def accuracy(pred: Sequence, gold: Sequence) -> float:
    _check(pred, gold, "accuracy")
    return sum(p == g for p, g in zip(pred, gold)) / len(gold)


def f1_scores(pred: Sequence, gold: Sequence) -> dict[str, float]:
    """Macro F1 (mean over labels seen in gold or pred) and micro F1 (= accuracy for single-label)."""
    _check(pred, gold, "f1")
    labels = sorted(set(gold) | set(pred), key=str)
    f1s = []
    tp_all = fp_all = fn_all = 0
    for c in labels:
        tp = sum(p == c and g == c for p, g in zip(pred, gold))
        fp = sum(p == c and g != c for p, g in zip(pred, gold))
        fn = sum(p != c and g == c for p, g in zip(pred, gold))
        tp_all, fp_all, fn_all = tp_all + tp, fp_all + fp, fn_all + fn
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    micro = 2 * tp_all / (2 * tp_all + fp_all + fn_all) if tp_all + fp_all + fn_all else 0.0
    return {"macro_f1": float(np.mean(f1s)), "micro_f1": micro}


def matthews_corrcoef(pred: Sequence, gold: Sequence) -> float:
    """Multi-class MCC (Gorodkin's R_K); 0 when undefined."""
    _check(pred, gold, "mcc")
    labels = sorted(set(gold) | set(pred), key=str)
    idx = {c: i for i, c in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)))
    for p, g in zip(pred, gold):
        cm[idx[g], idx[p]] += 1
    t, p = cm.sum(1), cm.sum(0)
    c, s = np.trace(cm), cm.sum()
    denom = math.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return float((c * s - (t * p).sum()) / denom) if denom else 0.0


def pearson(pred: Sequence[float], gold: Sequence[float]) -> float:
    _check(pred, gold, "pearson")
    x, y = np.asarray(pred, float), np.asarray(gold, float)
    x, y = x - x.mean(), y - y.mean()
    d = math.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / d) if d else 0.0


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="mergesort")
    ranks = np.empty(len(v))
    sv = v[order]
    i = 0
    while i < len(v):  # ties get their average rank
        j = i
        while j + 1 < len(v) and sv[j + 1] == sv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2
        i = j + 1
    return ranks


def spearman(pred: Sequence[float], gold: Sequence[float]) -> float:
    _check(pred, gold, "spearman")
    return pearson(_ranks(np.asarray(pred, float)), _ranks(np.asarray(gold, float)))


def normalize_answer(s: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    s = "".join(ch for ch in s.lower() if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def _token_f1(pred: str, gold: str) -> float:
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def squad_em_f1(pred: Sequence[str], golds: Sequence[Sequence[str]]) -> dict[str, float]:
    """Exact match and token F1 (percent), each the max over an example's gold answers."""
    _check(pred, golds, "squad")
    em = [max(float(normalize_answer(p) == normalize_answer(g)) for g in gs) for p, gs in zip(pred, golds)]
    f1 = [max(_token_f1(p, g) for g in gs) for p, gs in zip(pred, golds)]
    return {"exact_match": 100 * float(np.mean(em)), "f1": 100 * float(np.mean(f1))}


def is_entity_scheme(tags: Sequence[str]) -> bool:
    """Tags of a chunking scheme (IOB1/IOB2/IOE/IOBES: ``O`` and ``B-``/``I-``/``E-``/``S-``
    prefixed types), which entity-level scores apply to; POS tags and the like are not."""
    return any(t != "O" for t in tags) and all(t == "O" or re.match(r"^[BIESLU]-.", t) for t in tags)


def entity_scores(pred: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> dict[str, float]:
    """Entity-level precision, recall and F1 (micro over entity types) of tag sequences, one per
    sentence, as CoNLL's conlleval scores them (seqeval's default mode: an entity counts when its
    type and its exact span match). Plus token accuracy."""
    from seqeval.metrics import accuracy_score, f1_score, precision_score, recall_score

    _check(pred, gold, "entity_scores")
    for i, (p, g) in enumerate(zip(pred, gold)):
        if len(p) != len(g):
            raise ValueError(
                f"entity_scores: sentence {i} has {len(p)} predicted tags and {len(g)} gold tags"
            )
    pred, gold = [list(p) for p in pred], [list(g) for g in gold]
    return {
        "f1": float(f1_score(gold, pred)),
        "precision": float(precision_score(gold, pred)),
        "recall": float(recall_score(gold, pred)),
        "accuracy": float(accuracy_score(gold, pred)),
    }


def generation_metrics(pred: Sequence[str], gold: Sequence[str]) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (Google's ``rouge-score``: lower-cased alphanumeric tokens, no
    stemming; mean over examples), corpus BLEU (``sacrebleu``, its default 13a tokenization, 0-100)
    and exact match (stripped strings)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    _check(pred, gold, "generation_metrics")
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for p, g in zip(pred, gold):
        for k, score in scorer.score(g, p).items():
            totals[k] += score.fmeasure
    n = len(gold)
    return {
        "rouge_l": totals["rougeL"] / n,
        "rouge_1": totals["rouge1"] / n,
        "rouge_2": totals["rouge2"] / n,
        "bleu": float(sacrebleu.corpus_bleu(list(pred), [list(gold)]).score),
        "exact_match": sum(p.strip() == g.strip() for p, g in zip(pred, gold)) / n,
    }


def binary_f1(pred: Sequence, gold: Sequence, positive) -> float:
    """F1 of the ``positive`` class (GLUE's F1 for MRPC and QQP); 0 when it never occurs."""
    _check(pred, gold, "binary_f1")
    tp = sum(p == positive and g == positive for p, g in zip(pred, gold))
    wrong = sum((p == positive) != (g == positive) for p, g in zip(pred, gold))
    return 2 * tp / (2 * tp + wrong) if tp + wrong else 0.0


def classification_metrics(pred: Sequence, gold: Sequence) -> dict[str, float]:
    return {"accuracy": accuracy(pred, gold), **f1_scores(pred, gold), "mcc": matthews_corrcoef(pred, gold)}


def regression_metrics(pred: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    mse = float(np.mean((np.asarray(pred, float) - np.asarray(gold, float)) ** 2))
    return {"mse": mse, "pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}
