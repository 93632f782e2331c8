"""A classifier quality filter in the manner of GPT-3's: a light model scores how much a document
looks like a reference corpus of text the user trusts.

Features: hashed word 1–2-grams (scikit-learn ``HashingVectorizer``, 2^18 buckets, no vocabulary
to store); model: logistic regression trained with the reference documents as positives and a
sample of the corpus being cleaned as negatives (GPT-3 used curated text against raw Common
Crawl). A document is kept when its score P(reference | text) ≥ the threshold. The default
reference is the embedded pydoc corpus, an example only: give your own (``--quality-reference``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

N_FEATURES = 1 << 18
CHUNK_CHARS = 2000  # long reference documents are cut into pieces of about this size


def _chunks(texts: Sequence[str]) -> list[str]:
    out: list[str] = []
    for t in texts:
        out += [t[i : i + CHUNK_CHARS] for i in range(0, len(t), CHUNK_CHARS)] or [t]
    return [c for c in out if c.strip()]


class QualityClassifier:
    """Hashed n-gram logistic regression: reference (1) vs corpus sample (0)."""

    def __init__(self, threshold: float = 0.5, seed: int = 0) -> None:
        from sklearn.feature_extraction.text import HashingVectorizer

        self.threshold, self.seed = threshold, seed
        self.vectorizer = HashingVectorizer(
            n_features=N_FEATURES, ngram_range=(1, 2), alternate_sign=False, norm="l2", lowercase=True
        )
        self.model = None

    def fit(self, reference: Sequence[str], corpus_sample: Sequence[str]) -> QualityClassifier:
        """Train on ``reference`` (positives) against ``corpus_sample`` (negatives), classes
        weighted to balance their sizes."""
        from sklearn.linear_model import LogisticRegression

        pos, neg = _chunks(reference), _chunks(corpus_sample)
        if not pos or not neg:
            raise ValueError(
                f"quality classifier needs reference and corpus text, got {len(pos)} and {len(neg)}"
            )
        x = self.vectorizer.transform(pos + neg)
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        self.model = LogisticRegression(C=1.0, class_weight="balanced", max_iter=1000, random_state=self.seed)
        self.model.fit(x, y)
        return self

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """(N,) P(reference | text) of each text."""
        if self.model is None:
            raise ValueError("QualityClassifier.scores called before fit")
        return self.model.predict_proba(self.vectorizer.transform(list(texts)))[:, 1]

    def keeps(self, text: str) -> bool:
        return bool(self.scores([text])[0] >= self.threshold)
