"""Language identification with ``py3langid`` (langid.py's naive Bayes model, bundled in the
wheel: no download at run time; ISO 639-1 codes, see :func:`known_languages`; BSD-3-Clause)."""

from __future__ import annotations

from collections.abc import Iterable

SAMPLE_CHARS = 2000  # the first characters of a document decide its language


def known_languages() -> tuple[str, ...]:
    """The codes the bundled model can identify."""
    from py3langid.langid import _get_identifier

    return tuple(_get_identifier().nb_classes)


def language_of(text: str) -> str:
    """The ISO 639-1 code of the most likely language of ``text`` ("en", "de", ...)."""
    import py3langid

    return py3langid.classify(text[:SAMPLE_CHARS])[0]


class LanguageFilter:
    """Keeps documents whose identified language is one of ``languages``."""

    def __init__(self, languages: Iterable[str]) -> None:
        self.languages = frozenset(languages)
        known = set(known_languages())
        unknown = sorted(self.languages - known)
        if unknown:
            raise ValueError(f"languages: unknown code(s) {unknown}; known: {' '.join(sorted(known))}")

    def keeps(self, text: str) -> bool:
        return language_of(text) in self.languages
