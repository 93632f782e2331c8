"""Task metrics: accuracy, macro/micro F1, Matthews correlation, Pearson/Spearman, SQuAD EM/F1,
ROUGE-L. Pure Python / numpy on lists; no external metric packages."""

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


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(pred: Sequence[str], gold: Sequence[str]) -> float:
    """Mean ROUGE-L F-measure over whitespace tokens of lower-cased text."""
    _check(pred, gold, "rouge_l")
    scores = []
    for p, g in zip(pred, gold):
        pt, gt = p.lower().split(), g.lower().split()
        lcs = _lcs(pt, gt)
        if lcs == 0:
            scores.append(0.0)
            continue
        prec, rec = lcs / len(pt), lcs / len(gt)
        scores.append(2 * prec * rec / (prec + rec))
    return float(np.mean(scores))


def classification_metrics(pred: Sequence, gold: Sequence) -> dict[str, float]:
    return {"accuracy": accuracy(pred, gold), **f1_scores(pred, gold), "mcc": matthews_corrcoef(pred, gold)}


def regression_metrics(pred: Sequence[float], gold: Sequence[float]) -> dict[str, float]:
    mse = float(np.mean((np.asarray(pred, float) - np.asarray(gold, float)) ** 2))
    return {"mse": mse, "pearson": pearson(pred, gold), "spearman": spearman(pred, gold)}
