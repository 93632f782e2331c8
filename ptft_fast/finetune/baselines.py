"""Simple baselines to print beside a fine-tuning result: what a model must beat to have learned
anything from pre-training (the seed papers compare against them).

Classification: the majority class of the training set, and a bag-of-words logistic regression
(scikit-learn: unigram and bigram counts of each text, a sentence pair's two texts in separate
features). Regression: the training mean, and a bag-of-words ridge regression. Token tagging: each
word's most frequent training tag (unseen words get the most frequent tag overall), the usual NER
baseline. Each returns predictions that the task's own scoring turns into metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

from ptft_fast.finetune.readers import Example, TokenExample

MAX_FEATURES = 50_000  # vocabulary of the bag-of-words models (most frequent n-grams)


def majority_class(train: Sequence[Example], evaluation: Sequence[Example]) -> list[str]:
    """The most frequent training label for every evaluation example (ties: the first seen)."""
    label = Counter(str(e.label) for e in train).most_common(1)[0][0]
    return [label] * len(evaluation)


def train_mean(train: Sequence[Example], evaluation: Sequence[Example]) -> list[float]:
    mean = sum(float(e.label) for e in train) / len(train)
    return [mean] * len(evaluation)


def _features(train: Sequence[Example], evaluation: Sequence[Example]):
    """Sparse (N, F) n-gram counts for train and evaluation, fitted on train."""
    from scipy.sparse import hstack
    from sklearn.feature_extraction.text import CountVectorizer

    def fit(texts_tr, texts_ev):
        vec = CountVectorizer(ngram_range=(1, 2), max_features=MAX_FEATURES, token_pattern=r"(?u)\b\w+\b")
        try:
            return vec.fit_transform(texts_tr), vec.transform(texts_ev)
        except ValueError:  # no word at all in the texts (e.g. only punctuation)
            from scipy.sparse import csr_matrix

            return csr_matrix((len(texts_tr), 1)), csr_matrix((len(texts_ev), 1))

    x_tr, x_ev = fit([e.text for e in train], [e.text for e in evaluation])
    if train and train[0].text_pair is not None:
        p_tr, p_ev = fit([e.text_pair or "" for e in train], [e.text_pair or "" for e in evaluation])
        x_tr, x_ev = hstack([x_tr, p_tr]).tocsr(), hstack([x_ev, p_ev]).tocsr()
    return x_tr, x_ev


def bag_of_words_classifier(
    train: Sequence[Example], evaluation: Sequence[Example], seed: int = 0
) -> list[str]:
    """Logistic regression on n-gram counts; with one training class, that class."""
    from sklearn.linear_model import LogisticRegression

    labels = [str(e.label) for e in train]
    if len(set(labels)) < 2:
        return majority_class(train, evaluation)
    x_tr, x_ev = _features(train, evaluation)
    model = LogisticRegression(max_iter=1000, random_state=seed).fit(x_tr, labels)
    return [str(p) for p in model.predict(x_ev)]


def bag_of_words_regressor(train: Sequence[Example], evaluation: Sequence[Example]) -> list[float]:
    """Ridge regression on n-gram counts."""
    from sklearn.linear_model import Ridge

    x_tr, x_ev = _features(train, evaluation)
    model = Ridge(alpha=1.0).fit(x_tr, [float(e.label) for e in train])
    return [float(p) for p in model.predict(x_ev)]


def word_majority_tags(train: Sequence[TokenExample], evaluation: Sequence[TokenExample]) -> list[list[str]]:
    """Each word's most frequent training tag; unseen words the most frequent tag overall."""
    per_word: dict[str, Counter] = {}
    overall: Counter = Counter()
    for e in train:
        for w, t in zip(e.words, e.tags):
            per_word.setdefault(w, Counter())[t] += 1
            overall[t] += 1
    default = overall.most_common(1)[0][0]
    best = {w: c.most_common(1)[0][0] for w, c in per_word.items()}
    return [[best.get(w, default) for w in e.words] for e in evaluation]


def predictions(task: str, train, evaluation) -> dict[str, list]:
    """Baseline name → its predictions on ``evaluation`` for a task kind (cls, reg, tok); {} for
    the others (no simple baseline here)."""
    if task == "cls":
        return {
            "majority class": majority_class(train, evaluation),
            "bag of words (logistic regression)": bag_of_words_classifier(train, evaluation),
        }
    if task == "reg":
        return {
            "training mean": train_mean(train, evaluation),
            "bag of words (ridge regression)": bag_of_words_regressor(train, evaluation),
        }
    if task == "tok":
        return {"most frequent tag per word": word_majority_tags(train, evaluation)}
    return {}


def score(task: str, pred: list, gold: list, labels: list[str] | None, glue_task=None) -> dict[str, float]:
    """Metrics of predictions as names (cls labels, tok tag lists) or numbers (reg), with the task's
    own scoring (a GLUE preset's split metrics when given)."""
    from ptft_fast.finetune import glue, tasks
    from ptft_fast.finetune.metrics import classification_metrics

    if task == "reg":
        return glue.split_scores(glue_task, pred, gold) if glue_task else tasks.score_reg(pred, gold)
    ids = {c: i for i, c in enumerate(labels)}
    if task == "tok":
        return tasks.score_tok(
            [[ids[t] for t in p] for p in pred], [[ids[t] for t in g] for g in gold], labels
        )
    p, g = [ids[x] for x in pred], [ids[x] for x in gold]
    return glue.split_scores(glue_task, p, g) if glue_task else classification_metrics(p, g)


def baseline_scores(
    task: str, train: list, evaluations: list[list], labels, glue_task=None
) -> dict[str, dict]:
    """Baseline name → its metrics on the evaluation set(s) (MNLI: matched, then mismatched)."""
    from ptft_fast.finetune import glue

    def gold(examples):
        return [e.tags for e in examples] if task == "tok" else [e.label for e in examples]

    per_split = [predictions(task, train, ev) for ev in evaluations]  # [{name: predictions}]
    out = {}
    for name in per_split[0]:
        scores = [score(task, p[name], gold(ev), labels, glue_task) for p, ev in zip(per_split, evaluations)]
        out[name] = glue.task_scores(glue_task, *scores) if glue_task else scores[0]
    return out
