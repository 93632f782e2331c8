"""The key of a run folder's cached data (``data/key.json``): what the tokenizer and shards were
made from — the corpus (path and a fingerprint of its bytes), the tokenizer kind and size, how
text files are cut into documents, the eval split. Building is deterministic, so equal keys mean
identical data; :func:`key_diff` names the settings behind a difference."""

from __future__ import annotations

import json
from pathlib import Path

from ptft_fast.data.tokenizer import TokenizerConfig
from ptft_fast.train.config import TrainConfig

KEY_FILE = "key.json"
KEY_FORMAT = 1  # bump when the way run data is built changes
READER = {"jsonl_field": "text", "txt_docs": "blank"}  # how text inputs are cut into documents


def tokenizer_config(cfg: TrainConfig, tokenizer_kind: str) -> TokenizerConfig:
    """The tokenizer a run trains when it has none cached."""
    tok_cfg = TokenizerConfig(kind=tokenizer_kind, vocab_size=cfg.vocab_size)
    if tokenizer_kind == "unigram":
        tok_cfg.num_sentinels = min(100, cfg.vocab_size // 10)
    return tok_cfg


def data_key(cfg: TrainConfig, tokenizer_kind: str) -> dict:
    """What the cached run data is made from; equal keys ⇒ identical data (building is deterministic)."""
    from ptft_fast.data.corpus import fingerprint

    tok = tokenizer_config(cfg, tokenizer_kind)
    return {
        "format": KEY_FORMAT,
        "data": {"path": cfg.data, "fingerprint": fingerprint(None if cfg.data is None else [cfg.data])},
        "tokenizer": {
            "kind": tok.kind,
            "vocab_size": tok.vocab_size,
            "min_frequency": tok.min_frequency,
            "num_sentinels": tok.num_sentinels if tok.kind == "unigram" else 0,
            "lowercase": tok.lowercase if tok.kind == "wordpiece" else False,
        },
        "reader": READER,
        "eval_fraction": cfg.eval_fraction,
    }


def key_diff(cached: dict, wanted: dict) -> list[str]:
    """``setting: cached … now …`` for every leaf that differs (the corpus by path and content)."""
    diffs = []
    for name in sorted(set(cached) | set(wanted)):
        a, b = cached.get(name), wanted.get(name)
        if name == "data" and isinstance(a, dict) and isinstance(b, dict):
            if a.get("fingerprint") != b.get("fingerprint"):
                now, then = (d.get("path") or "the embedded corpus" for d in (b, a))
                why = "its content changed since" if now == then else f"the cache was built from {then}"
                diffs.append(f"data: {now} ({why})")
        elif isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{name}.{d}" for d in key_diff(a, b)]
        elif a != b:
            diffs.append(f"{name}: cached {a!r}, now {b!r}")
    return diffs


def read_key(root: Path) -> dict | None:
    """The key in ``root`` (a run's ``data/`` folder), or None when it has none or it is unreadable."""
    try:
        return json.loads((root / KEY_FILE).read_text())
    except (OSError, ValueError):
        return None
