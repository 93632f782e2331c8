"""Tokenizers for the three model families, built on the ``tokenizers`` library.

- ``"wordpiece"`` (BERT): lower-casing BERT normalizer, WordPiece, [PAD] [UNK] [CLS] [SEP] [MASK];
  encodes ``[CLS] A [SEP]`` / ``[CLS] A [SEP] B [SEP]`` with token types 0/1.
- ``"bpe"`` (GPT-2 / RoBERTa / BART): byte-level BPE (no unknown tokens), <s> <pad> </s> <unk> <mask>;
  encodes ``<s> A </s>`` / ``<s> A </s></s> B </s>``.
- ``"unigram"`` (T5): NFKC + Metaspace Unigram, <pad> </s> <unk> then sentinels; encodes ``A </s>``.
  Sentinels follow T5: ``<extra_id_0>`` has the highest id and ids decrease with the index.

:class:`PtftTokenizer` wraps a ``tokenizers.Tokenizer`` with the special-token ids the collators
need and an HF-style batch ``__call__``. It saves/loads ``tokenizer.json`` and reads an existing
Hugging Face tokenizer directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ptft_fast.data import stable_training
from ptft_fast.errors import UserInputError, one_line

TOKENIZER_FILE = "tokenizer.json"
KINDS = ("wordpiece", "bpe", "unigram")

# Names the special tokens go by in each family; the first one present in a vocabulary wins.
_ROLE_NAMES = {
    "pad": ("[PAD]", "<pad>", "<|endoftext|>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>"),
    "sep": ("[SEP]", "</s>"),
    "mask": ("[MASK]", "<mask>"),
    "bos": ("<s>", "[CLS]", "<|endoftext|>"),
    "eos": ("</s>", "[SEP]", "<|endoftext|>"),
}


@dataclass
class TokenizerConfig:
    """Training settings."""

    kind: str = "wordpiece"  # "wordpiece" | "bpe" | "unigram"
    vocab_size: int = 8000  # including special tokens (and sentinels for unigram)
    min_frequency: int = 2
    num_sentinels: int = 100  # unigram (T5) only: <extra_id_0> … <extra_id_{n-1}>
    lowercase: bool = True  # wordpiece only (bert-base-uncased style)
    show_progress: bool = False  # the trainer's own progress bar


def _specials(cfg: TokenizerConfig) -> list[str]:
    if cfg.kind == "wordpiece":
        return ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if cfg.kind == "bpe":
        return ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
    return ["<pad>", "</s>", "<unk>"]


def _build(cfg: TokenizerConfig) -> tuple[Tokenizer, object]:
    """An untrained tokenizer and its trainer."""
    specials = _specials(cfg)
    if cfg.kind == "wordpiece":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=cfg.lowercase, strip_accents=cfg.lowercase)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        trainer = trainers.WordPieceTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=specials,
            show_progress=cfg.show_progress,
        )
    elif cfg.kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=cfg.vocab_size,
            min_frequency=cfg.min_frequency,
            special_tokens=specials,
            show_progress=cfg.show_progress,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    elif cfg.kind == "unigram":
        tok = Tokenizer(models.Unigram())
        tok.normalizer = normalizers.NFKC()
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        trainer = trainers.UnigramTrainer(
            vocab_size=cfg.vocab_size - cfg.num_sentinels,
            special_tokens=specials,
            unk_token="<unk>",
            show_progress=cfg.show_progress,
        )
    else:
        raise ValueError(f"tokenizer kind must be one of {KINDS}, got {cfg.kind!r}")
    return tok, trainer


def _post_processor(kind: str, tok: Tokenizer):
    ids = tok.token_to_id
    if kind == "wordpiece":
        return processors.TemplateProcessing(
            single="[CLS] $A [SEP]",
            pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids("[CLS]")), ("[SEP]", ids("[SEP]"))],
        )
    if kind == "bpe":
        return processors.TemplateProcessing(
            single="<s> $A </s>",
            pair="<s> $A </s> </s> $B </s>",
            special_tokens=[("<s>", ids("<s>")), ("</s>", ids("</s>"))],
        )
    return processors.TemplateProcessing(
        single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", ids("</s>"))]
    )


def train_tokenizer(
    texts: Iterable[str], cfg: TokenizerConfig | None = None, *, progress: bool = False
) -> PtftTokenizer:
    """Train a tokenizer of ``cfg.kind`` on ``texts`` (any iterable of strings, streamed).

    Deterministic: the same texts (in the same order) and settings give a byte-identical
    ``tokenizer.json`` in every process (WordPiece and Unigram go through
    :mod:`ptft_fast.data.stable_training`, which says why and how). ``progress``: a bar of the
    documents read and the time spent, shown once training takes more than a few seconds."""
    from ptft_fast.data.progress import LiveBar

    cfg = cfg or TokenizerConfig()
    tok, trainer = _build(cfg)
    desc = f"train {cfg.kind} tokenizer ({cfg.vocab_size} tokens)"
    with LiveBar(desc, unit="doc", enabled=progress) as bar:

        def read(stream: Iterable[str]):
            yield from bar.counted(stream)
            bar.set_description(f"{desc}, all read, building the vocabulary")

        if cfg.kind == "wordpiece":
            tok.model = stable_training.train_wordpiece(
                read(texts), tok, cfg.vocab_size, cfg.min_frequency, _specials(cfg)
            )
        else:
            tok.train_from_iterator(read(texts), trainer=trainer)
    if cfg.kind == "unigram":
        tok.model = stable_training.canonical_unigram(tok.model, len(_specials(cfg)))
        # added last in reverse so <extra_id_0> gets the highest id, as in T5
        tok.add_special_tokens([f"<extra_id_{i}>" for i in reversed(range(cfg.num_sentinels))])
    tok.post_processor = _post_processor(cfg.kind, tok)
    return PtftTokenizer(tok)


class PtftTokenizer:
    """A ``tokenizers.Tokenizer`` plus the special-token ids collators need.

    Attributes (``None`` when the vocabulary has no such token): ``pad_id``, ``unk_id``, ``cls_id``,
    ``sep_id``, ``mask_id``, ``bos_id``, ``eos_id``; ``sentinel_ids[k]`` is the id of
    ``<extra_id_k>``; ``special_ids`` are all special/added token ids.
    """

    def __init__(self, tokenizer: Tokenizer, special_tokens: dict[str, str] | None = None) -> None:
        """special_tokens: role ("pad", "unk", "cls", "sep", "mask", "bos", "eos") → token text,
        overriding the names each family uses (e.g. from an HF tokenizer folder's config)."""
        self.backend = tokenizer
        # padding/truncation saved in a tokenizer.json would silently cut shard documents;
        # __call__ sets them per call instead
        tokenizer.no_truncation()
        tokenizer.no_padding()
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        special_tokens = special_tokens or {}
        for role, token in special_tokens.items():
            if role not in _ROLE_NAMES:
                raise ValueError(f"special_tokens role must be one of {tuple(_ROLE_NAMES)}, got {role!r}")
            if token not in vocab:
                raise ValueError(f"special_tokens[{role!r}] = {token!r} is not in the vocabulary")
        for role, names in _ROLE_NAMES.items():
            if role in special_tokens:
                setattr(self, f"{role}_id", vocab[special_tokens[role]])
            else:
                setattr(self, f"{role}_id", next((vocab[n] for n in names if n in vocab), None))
        sentinels = []
        while f"<extra_id_{len(sentinels)}>" in vocab:
            sentinels.append(vocab[f"<extra_id_{len(sentinels)}>"])
        self.sentinel_ids: list[int] = sentinels
        specials = {t.content for t in tokenizer.get_added_tokens_decoder().values() if t.special}
        specials |= {n for names in _ROLE_NAMES.values() for n in names if n in vocab}
        specials |= set(special_tokens.values())
        self.special_ids: list[int] = sorted(vocab[s] for s in specials)

    # ---------------------------------------------------------------- vocab facts
    @property
    def vocab_size(self) -> int:
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def kind(self) -> str:
        """ "wordpiece", "bpe", "unigram" or the model type name of a loaded tokenizer."""
        model = json.loads(self.backend.model.__getstate__())  # the model's JSON form
        mtype = model.get("type", "")
        if mtype == "BPE":
            return "bpe"
        return {"WordPiece": "wordpiece", "Unigram": "unigram"}.get(mtype, mtype.lower())

    def special_mask_table(self) -> np.ndarray:
        """(V,) bool: True for special-token ids (never masked by the objectives)."""
        table = np.zeros(self.vocab_size, dtype=bool)
        table[self.special_ids] = True
        return table

    def word_start_table(self) -> np.ndarray:
        """(V,) bool: True where a token begins a word (for whole-word / span masking).

        WordPiece continuations start with "##"; byte-level BPE and Metaspace tokens that begin a
        word start with "Ġ" / "▁". Special tokens count as word starts, except the unknown token,
        which can stand inside a word (a Unigram piece missing from the vocabulary).
        """
        table = np.ones(self.vocab_size, dtype=bool)
        if self.unk_id is not None:
            table[self.unk_id] = False
        kind = self.kind
        for token, idx in self.backend.get_vocab(with_added_tokens=True).items():
            if idx in self.special_ids:
                continue
            if kind == "wordpiece":
                table[idx] = not token.startswith("##")
            elif kind == "bpe":
                table[idx] = token.startswith("Ġ") or token.startswith("Ċ")
            elif kind == "unigram":
                table[idx] = token.startswith("▁")
        return table

    # ---------------------------------------------------------------- encoding
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of one text (no special tokens by default: shards store raw ids)."""
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        """Token ids of many texts (parallel inside ``tokenizers``)."""
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def __call__(
        self,
        texts: str | Sequence[str],
        text_pairs: str | Sequence[str] | None = None,
        *,
        padding: bool | str = True,
        truncation: bool = False,
        max_length: int | None = None,
        add_special_tokens: bool = True,
        return_tensors: str | None = "pt",
    ) -> dict:
        """Batch-encode like HF tokenizers.

        padding: True / "longest" pads to the longest in the batch, "max_length" to ``max_length``,
        False leaves lists ragged (then ``return_tensors`` must be None). truncation: cut to
        ``max_length`` (pairs: longest-first). Returns ``input_ids``, ``token_type_ids``,
        ``attention_mask``, each (B, T) — torch tensors ("pt"), numpy ("np") or lists (None).
        """
        single = isinstance(texts, str)
        texts = [texts] if single else list(texts)
        if text_pairs is not None:
            text_pairs = [text_pairs] if isinstance(text_pairs, str) else list(text_pairs)
            if len(text_pairs) != len(texts):
                raise ValueError(
                    f"text_pairs must match texts in length, got {len(text_pairs)} vs {len(texts)}"
                )
        if (truncation or padding == "max_length") and max_length is None:
            raise ValueError("max_length is required with truncation=True or padding='max_length'")
        if padding is False and return_tensors is not None:
            raise ValueError("padding=False gives ragged lists: pass return_tensors=None")
        if padding not in (True, False, "longest", "max_length"):
            raise ValueError(f"padding must be True, False, 'longest' or 'max_length', got {padding!r}")
        tok = self.backend
        if truncation:
            tok.enable_truncation(max_length, strategy="longest_first")
        else:
            tok.no_truncation()
        if padding:
            if self.pad_id is None:
                raise ValueError("padding needs a pad token, but this vocabulary has none")
            length = max_length if padding == "max_length" else None
            tok.enable_padding(pad_id=self.pad_id, pad_token=tok.id_to_token(self.pad_id), length=length)
        else:
            tok.no_padding()
        try:
            inputs = list(zip(texts, text_pairs)) if text_pairs is not None else texts
            encs = tok.encode_batch(inputs, add_special_tokens=add_special_tokens)
        finally:
            tok.no_truncation()
            tok.no_padding()
        out = {
            "input_ids": [e.ids for e in encs],
            "token_type_ids": [e.type_ids for e in encs],
            "attention_mask": [e.attention_mask for e in encs],
        }
        if return_tensors == "pt":
            import torch

            return {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        if return_tensors == "np":
            return {k: np.asarray(v, dtype=np.int64) for k, v in out.items()}
        if return_tensors is not None:
            raise ValueError(f"return_tensors must be 'pt', 'np' or None, got {return_tensors!r}")
        return out

    # ---------------------------------------------------------------- files
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` into folder ``path`` (or to ``path`` if it ends in .json)."""
        from ptft_fast.utils.atomic import atomic_open

        path = Path(path)
        file = path if path.suffix == ".json" else path / TOKENIZER_FILE
        with atomic_open(file, "w") as fh:
            fh.write(self.backend.to_str(pretty=True))
        return file

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> PtftTokenizer:
        """Load a ``tokenizer.json``, or a folder holding one (e.g. a Hugging Face tokenizer directory)."""
        path = Path(path)
        file = path / TOKENIZER_FILE if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} at {str(path)!r}")
        try:
            backend = Tokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception for any file it cannot parse
            raise UserInputError(f"{file}: not a tokenizers JSON file ({one_line(exc)})") from None
        vocab = backend.get_vocab(with_added_tokens=True)
        # roles an HF config names but the vocabulary lacks fall back to the family defaults
        roles = {r: t for r, t in _hf_special_tokens(file.parent).items() if t in vocab}
        return cls(backend, roles)

    @classmethod
    def from_str(cls, text: str) -> PtftTokenizer:
        return cls(Tokenizer.from_str(text))

    def to_str(self) -> str:
        return self.backend.to_str()


def _hf_special_tokens(folder: Path) -> dict[str, str]:
    """Roles named in an HF folder's ``tokenizer_config.json`` / ``special_tokens_map.json``
    (entries are strings or ``{"content": ...}`` dicts; the map wins); empty without them."""
    out = {}
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        file = folder / name
        if not file.is_file():
            continue
        entries = json.loads(file.read_text(encoding="utf-8"))
        for role in _ROLE_NAMES:
            value = entries.get(f"{role}_token")
            if isinstance(value, dict):
                value = value.get("content")
            if isinstance(value, str):
                out[role] = value
    return out
