"""Baselines printed beside a fine-tuning result: majority class, bag-of-words logistic / ridge
regression, most frequent tag per word — predictions checked against what each must give."""

from __future__ import annotations

import pytest

from ptft_fast.finetune import baselines
from ptft_fast.finetune.readers import Example, TokenExample


def ex(text, label, pair=None):
    return Example(text, pair, label)


TRAIN = [ex("great fun film", "pos"), ex("great acting", "pos"), ex("fun and great", "pos"),
         ex("awful plot", "neg"), ex("boring awful mess", "neg")]  # fmt: skip


def test_majority_class_is_the_most_frequent_training_label():
    assert baselines.majority_class(TRAIN, [ex("x", None)] * 3) == ["pos"] * 3


def test_bag_of_words_learns_word_cues_and_uses_both_texts_of_a_pair():
    test = [ex("great", None), ex("awful", None), ex("a fun story", None), ex("an awful story", None)]
    assert baselines.bag_of_words_classifier(TRAIN, test) == ["pos", "neg", "pos", "neg"]
    # the label depends on the second text only: its words must be features of their own
    pairs = [ex("same question", lab, pair=p) for p, lab in (("yes indeed", "1"), ("no never", "0"))] * 3
    got = baselines.bag_of_words_classifier(
        pairs, [ex("same question", None, "yes"), ex("same question", None, "no")]
    )
    assert got == ["1", "0"]
    assert baselines.bag_of_words_classifier(TRAIN[:2], [ex("awful", None)]) == ["pos"]  # one class: majority


def test_regression_baselines():
    train = [ex("very good", 4.0), ex("good", 3.0), ex("bad", 1.0), ex("very bad", 0.0)]
    assert baselines.train_mean(train, [ex("x", None)]) == [2.0]
    good, bad = baselines.bag_of_words_regressor(train, [ex("good", None), ex("bad", None)])
    assert good > 2.0 > bad


def test_word_majority_tags():
    train = [TokenExample(["Paris", "is", "big"], ["B-LOC", "O", "O"]), TokenExample(["Paris", "Hilton"], ["B-PER", "I-PER"]),
             TokenExample(["Paris", "again"], ["B-LOC", "O"])]  # fmt: skip
    got = baselines.word_majority_tags(train, [TokenExample(["Paris", "unseen", "Hilton"], ["O"] * 3)])
    assert got == [["B-LOC", "O", "I-PER"]]  # Paris: LOC 2 of 3; unseen: the most frequent tag "O"


def test_scores_use_the_tasks_metrics():
    evaluation = [ex("great", "pos"), ex("awful", "neg"), ex("fun", "pos"), ex("awful mess", "neg")]
    s = baselines.baseline_scores("cls", TRAIN, [evaluation], ["neg", "pos"])
    assert s["majority class"]["accuracy"] == 0.5 and s["majority class"]["mcc"] == 0.0
    assert s["bag of words (logistic regression)"]["accuracy"] == pytest.approx(1.0)
    tok = baselines.baseline_scores(
        "tok",
        [TokenExample(["Rome", "is", "big"], ["B-LOC", "O", "O"])],
        [[TokenExample(["Rome", "was"], ["B-LOC", "O"])]],
        ["O", "B-LOC"],
    )
    assert tok["most frequent tag per word"]["f1"] == 1.0
