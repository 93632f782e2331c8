"""Evaluation as the benchmarks do it: entity-level NER scores (seqeval, CoNLL's conlleval
convention) computed over words, ROUGE-1/2/L (rouge-score) and BLEU (sacrebleu) against values
worked out by hand, binary F1."""

from __future__ import annotations

import math

import pytest
import torch

from ptft_fast.finetune import tasks
from ptft_fast.finetune.metrics import binary_f1, entity_scores, generation_metrics, is_entity_scheme
from ptft_fast.models.heads import IGNORE_INDEX

# seqeval's README example: MISC is predicted one word too early (a wrong span), PER is right.
TRUE = [["O", "O", "O", "B-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]
PRED = [["O", "O", "B-MISC", "I-MISC", "I-MISC", "I-MISC", "O"], ["B-PER", "I-PER", "O"]]


def test_entity_scores_count_whole_entities():
    s = entity_scores(PRED, TRUE)
    # 2 gold entities, 2 predicted, 1 exact match: P = R = F1 = 1/2; 8 of 10 tokens right
    assert s == pytest.approx({"f1": 0.5, "precision": 0.5, "recall": 0.5, "accuracy": 0.8})
    # per token the same prediction would look far better: that is the bug this guards
    assert sum(p == t for ps, ts in zip(PRED, TRUE) for p, t in zip(ps, ts)) / 10 == 0.8
    # conlleval: an I- tag after O opens a chunk (IOB1), so this is a hit
    assert entity_scores([["I-PER", "I-PER", "O"]], [["B-PER", "I-PER", "O"]])["f1"] == 1.0
    # wrong type, same span: a miss
    assert entity_scores([["B-LOC", "I-LOC", "O"]], [["B-PER", "I-PER", "O"]])["f1"] == 0.0
    # 3 gold, 1 predicted and right: P = 1, R = 1/3, F1 = 1/2
    s = entity_scores([["B-A", "O", "O", "O"]], [["B-A", "O", "B-B", "B-C"]])
    assert (s["precision"], s["recall"], s["f1"]) == pytest.approx((1.0, 1 / 3, 0.5))
    with pytest.raises(ValueError, match="sentence 0 has 2 predicted tags and 3 gold"):
        entity_scores([["O", "O"]], [["O", "O", "O"]])


def test_entity_scheme_detection():
    assert is_entity_scheme(["O", "B-PER", "I-PER", "S-LOC", "E-LOC"])
    assert not is_entity_scheme(["NN", "VB", "O"]) and not is_entity_scheme(["O"])


class FixedTagger(torch.nn.Module):
    """Returns fixed per-position logits (B, T, L): what the model "predicts"."""

    def __init__(self, logits):
        super().__init__()
        self.out = logits

    def forward(self, input_ids, attention_mask=None, **_):
        return {"logits": self.out[: input_ids.shape[0], : input_ids.shape[1]]}


def test_evaluate_tok_scores_entities_over_words_not_subwords():
    """Sentence 1: "Jo Smithson ran" with Smithson split in two; labels sit on first sub-words.
    The model gets every first sub-word right except I-PER (says O): one entity of two is wrong,
    though most positions are right, and the tag at the second sub-word never counts."""
    tags = ["O", "B-PER", "I-PER", "B-LOC"]
    labels = torch.tensor(
        [
            [IGNORE_INDEX, 1, 2, IGNORE_INDEX, 0, IGNORE_INDEX],
            [IGNORE_INDEX, 3, 0, IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX],
        ]
    )
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    data = {"input_ids": torch.ones_like(labels), "attention_mask": mask, "labels": labels}
    pred = torch.tensor([[0, 1, 0, 2, 0, 0], [0, 3, 0, 0, 0, 0]])  # position 3: a 2nd sub-word, ignored
    logits = torch.nn.functional.one_hot(pred, 4).float()
    s = tasks.evaluate_tok(FixedTagger(logits), data, tags)
    # gold entities: PER(Jo Smithson), LOC; predicted: PER(Jo), LOC → 1 of 2 right each way
    assert s["f1"] == pytest.approx(0.5) and s["accuracy"] == pytest.approx(4 / 5)
    assert (
        tasks.primary_metric("tok", tags) == "f1" and tasks.primary_metric("tok", ["NN", "VB"]) == "accuracy"
    )


def test_rouge_and_bleu_hand_values():
    pred, gold = ["the cat sat on the mat"], ["the cat sat on a mat"]
    m = generation_metrics(pred, gold)
    # unigrams 5 of 6 each way; bigrams 3 of 5; LCS "the cat sat on mat" = 5 of 6
    assert m["rouge_1"] == pytest.approx(5 / 6) and m["rouge_2"] == pytest.approx(3 / 5)
    assert m["rouge_l"] == pytest.approx(5 / 6)
    # BLEU: clipped n-gram precisions 5/6, 3/5, 2/4, 1/3, equal lengths (no brevity penalty)
    assert m["bleu"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-3)
    assert m["exact_match"] == 0.0
    # brevity penalty: a 3-word prediction of a 6-word reference, every n-gram right up to 3-grams
    short = generation_metrics(["the cat sat"], ["the cat sat on a mat"])
    assert short["rouge_1"] == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert math.isfinite(short["bleu"]) and short["bleu"] < 40


def test_binary_f1_is_the_positive_class():
    # TP = 2, FP = 1, FN = 1 → 2·2 / (4 + 2) = 2/3, whatever the negatives do
    assert binary_f1(["1", "1", "1", "0", "0"], ["1", "1", "0", "1", "0"], "1") == pytest.approx(2 / 3)
    assert binary_f1(["0", "0"], ["0", "0"], "1") == 0.0
