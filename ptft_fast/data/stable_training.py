"""Deterministic wrappers around the ``tokenizers`` trainers that are not deterministic.

The same corpus and settings must give a byte-identical ``tokenizer.json`` (and so identical
shards and losses). ``tokenizers`` (0.23) keeps word counts in hash maps seeded at random per
process (``ahash``), and two of its trainers let that order leak into the result:

- **WordPiece** (trained by ``BpeTrainer`` with the ``##`` prefix): the ``##c`` symbols are given
  ids in the order the word map is iterated, and merges of equal count are broken by pair id, so
  the vocabulary (not only its ids) differs run to run, single-threaded too (upstream issue
  #1794). :func:`train_wordpiece` maps every character to a private-use code point — one for a
  word's first character, another for the same character inside a word — and trains a plain BPE
  (no prefix) on those words: its alphabet is then complete and sorted before any merge, so ids
  and ties are fixed; the result is mapped back to WordPiece's ``c`` / ``##c`` tokens.
- **Unigram**: required characters missing from the trained pieces get scores
  ``min + k · 1e-4`` in hash order, and the EM sums run in that order too (last-bit noise).
  :func:`canonical_unigram` re-scores those characters in code-point order, rounds scores to
  1e-6 and sorts pieces by (score, piece). What it cannot remove: a pruning decision between two
  pieces whose losses tie to the last bit could still go either way (not seen in testing).

Byte-level BPE needs no wrapper: its alphabet is the fixed 256 bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

# Private-use code points (BMP area and planes 15-16): never produced by our normalizers from
# ordinary text; here they only ever carry mapped symbols, never the corpus's own characters.
_POOL = [range(0xE000, 0xF900), range(0xF0000, 0xFFFFE), range(0x100000, 0x10FFFE)]
_POOL_SIZE = sum(len(r) for r in _POOL)


def _pool_char(i: int) -> str:
    for r in _POOL:
        if i < len(r):
            return chr(r[i])
        i -= len(r)
    raise ValueError(f"tokenizer training: more than {_POOL_SIZE // 2} distinct characters in the corpus")


class _SymbolTable(dict):
    """ord(char) → a fresh private-use char, allocated in order of first use (str.translate table)."""

    def __init__(self, allocate) -> None:
        super().__init__()
        self._allocate = allocate
        self.inverse: dict[str, str] = {}

    def __missing__(self, code: int) -> str:
        sym = self[code] = self._allocate()
        self.inverse[sym] = chr(code)
        return sym


def train_wordpiece(
    texts: Iterable[str], template: Tokenizer, vocab_size: int, min_frequency: int, specials: list[str]
) -> models.WordPiece:
    """A WordPiece model trained like ``WordPieceTrainer`` on ``texts``, deterministically.

    ``template`` supplies the normalizer and pre-tokenizer the words are cut with.
    """
    counter = iter(range(_POOL_SIZE))
    first = _SymbolTable(lambda: _pool_char(next(counter)))
    inner = _SymbolTable(lambda: _pool_char(next(counter)))

    def mapped(stream: Iterable[str]) -> Iterator[str]:
        normalize, split = template.normalizer.normalize_str, template.pre_tokenizer.pre_tokenize_str
        for text in stream:
            words = split(normalize(text))
            yield " ".join(w[0].translate(first) + w[1:].translate(inner) for w, _ in words if w)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=specials, show_progress=False
    )
    bpe.train_from_iterator(mapped(texts), trainer=trainer)
    vocab = {}
    for token, idx in bpe.get_vocab(with_added_tokens=False).items():
        if token in specials:
            vocab[token] = idx
        elif token[0] in first.inverse:
            vocab[first.inverse[token[0]] + "".join(inner.inverse[c] for c in token[1:])] = idx
        else:
            vocab["##" + "".join(inner.inverse[c] for c in token)] = idx
    return models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##")


PENALTY_STEP = 1e-4  # tokenizers' min_score_penalty_delta for required characters
SCORE_DECIMALS = 6


def canonical_unigram(model: models.Unigram, num_specials: int) -> models.Unigram:
    """``model`` (fresh from ``UnigramTrainer``) with its hash-order traces removed: see the module
    docstring. The first ``num_specials`` pieces (special tokens) keep their ids."""
    state = json.loads(model.__getstate__())
    vocab = [(p, float(s)) for p, s in state["vocab"]]
    specials, pieces = vocab[:num_specials], vocab[num_specials:]
    low = min(s for _, s in pieces)

    def penalty_rank(piece: str, score: float) -> int | None:
        k = (score - low) / PENALTY_STEP
        return round(k) if len(piece) == 1 and abs(k - round(k)) < 1e-6 else None

    penalised = sorted(p for p, s in pieces if penalty_rank(p, s) is not None)
    ranks = {p: k for k, p in enumerate(penalised)}
    rescored = [(p, low + ranks[p] * PENALTY_STEP if p in ranks else s) for p, s in pieces]
    rescored = sorted(((p, round(s, SCORE_DECIMALS)) for p, s in rescored), key=lambda ps: (-ps[1], ps[0]))
    return models.Unigram(
        specials + rescored, unk_id=state.get("unk_id"), byte_fallback=state.get("byte_fallback", False)
    )
