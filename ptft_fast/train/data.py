"""Data for a run: tokenizer + train/eval token shards (cached in the run folder) and a resumable
batch source per objective.

``prepare_run_data`` accepts a shard folder (``index.json``; a ``ptft prepare`` output folder with
``shards/`` too), text inputs (.txt / .jsonl files or folders), or nothing (the embedded pydoc
corpus). Text inputs are split by document into train and eval (every k-th document held out).
The cache carries a key (``data/key.json``: corpus fingerprint, tokenizer kind and size, reader and
split settings); when the run's settings give another key the cache is rebuilt (a fresh run) or
the run is refused (a resumed one), naming the settings that differ.

:class:`BatchSource` packs documents from a :class:`ResumableSampler` into rows and collates them
for the objective; ``state_dict()`` holds the stream position and the collators' RNG states, so a
restored source yields exactly the batches an uninterrupted one would.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ptft_fast.data.bart import BartCollator, BartNoiseConfig, BartNoiser, sentence_end_table
from ptft_fast.data.clm import PackedCLMCollator, PrefixLMCollator
from ptft_fast.data.collate import IGNORE_INDEX
from ptft_fast.data.electra import electra_masking
from ptft_fast.data.masking import MaskingConfig
from ptft_fast.data.mixture import MixtureShards, make_sampler, parse_mixture
from ptft_fast.data.mlm import MLMCollator, MLMConfig
from ptft_fast.data.nsp import NSPConfig, NSPStream
from ptft_fast.data.packing import PackedStream, framed_doc_ids, row_segments
from ptft_fast.data.seq2seq_variants import Seq2SeqVariantCollator, Seq2SeqVariantConfig
from ptft_fast.data.shards import INDEX_FILE, ShardConfig, TokenShards, write_shards
from ptft_fast.data.t5 import T5Config, T5SpanCorruptionCollator, t5_raw_length
from ptft_fast.data.tokenizer import TOKENIZER_FILE, PtftTokenizer, train_tokenizer
from ptft_fast.errors import UserInputError
from ptft_fast.train.config import TrainConfig
from ptft_fast.train.data_key import KEY_FILE, READER, data_key, key_diff, read_key, tokenizer_config
from ptft_fast.utils.atomic import atomic_write_json

EVAL_SHARDS = "eval_shards"  # held-out shards `ptft prepare` writes beside shards/
ROW_SEGMENTS = "row_segments"  # batch key of the per-row document count (not a model input)
MASKED = ("mlm", "mlm+nsp", "spanbert", "electra")  # BERT-style masking of an encoder's input
# Encoder-decoder objectives of the T5 objective comparison → their collator variant.
SEQ2SEQ_VARIANTS = {"seq2seq-mlm": "mlm", "seq2seq-prefix-lm": "prefix-lm", "deshuffle": "deshuffle"}


class RunDataError(UserInputError):
    """The run's data cannot be built or does not match the run (message names the setting)."""


@dataclass
class RunData:
    tokenizer: PtftTokenizer
    train: TokenShards
    eval: TokenShards
    eval_is_train: bool  # no held-out documents (a shard folder was given)


def _shard_folder(path: Path) -> Path | None:
    for cand in (path, path / "shards"):
        if (cand / INDEX_FILE).is_file():
            return cand
    return None


def _texts(data: str | None, text_column: str | None = None) -> list[str]:
    """Documents of the run's corpus; lines that are not valid UTF-8 are skipped with a warning
    naming the first, and a corpus with none left is an error that says why. A datasets input
    (save_to_disk folder, .parquet, .arrow) gives the rows of its text column."""
    from ptft_fast.data import hf_datasets

    if data is None:
        from ptft_fast.data.corpus import embedded_corpus

        return embedded_corpus()
    if hf_datasets.is_dataset(data):
        texts = hf_datasets.texts(data, text_column)
        if not texts:
            raise RunDataError(f"data={data!r}: no non-empty text in the dataset")
        return texts
    from ptft_fast.data.corpus import read_documents

    broken: list = []
    texts = [
        d.text
        for d in read_documents(
            [data], broken.append, jsonl_field=READER["jsonl_field"], txt_doc_split=READER["txt_docs"]
        )
    ]
    if broken:
        b = broken[0]
        what = f"{len(broken)} line(s) skipped (first: {b.source}:{b.line}: {b.reason})"
        if not texts:
            raise RunDataError(f"data={data!r}: no documents left, {what}; `ptft prepare` reports every one")
        warnings.warn(f"data={data!r}: {what}", stacklevel=3)
    if not texts:
        raise RunDataError(f"data={data!r}: no documents found (.txt/.jsonl files or a shard folder)")
    return texts


def prepare_run_data(
    cfg: TrainConfig,
    tokenizer_kind: str,
    out: Path,
    resuming: bool = False,
    tokenizer: PtftTokenizer | None = None,
) -> RunData:
    """Tokenizer and shards for the run, built once and cached under ``out/data`` with their key.

    A cache whose key differs from the run's is rebuilt with a warning naming what changed, or,
    when ``resuming`` (the checkpoint's data position refers to the cached shards), refused.
    ``tokenizer``: use this one instead of training one (it becomes part of the cache key).

    A mixture (``data="a.txt:0.7,b.txt:0.3"``) builds every source as a run of its own under
    ``out/data/mix<i>`` (one tokenizer for all: shard folders must share theirs; text sources are
    tokenized with the first source's tokenizer, trained on the first source) and draws from them
    with the weights (:class:`~ptft_fast.data.mixture.MixtureSampler`)."""
    try:
        mixture = parse_mixture(cfg.data)
    except ValueError as exc:
        raise RunDataError(str(exc)) from None
    if mixture is not None:
        return _mixture_run_data(cfg, mixture, tokenizer_kind, out, resuming)
    if cfg.data is not None and (folder := _shard_folder(Path(cfg.data))) is not None:
        shards = TokenShards(folder)
        held_out = folder.parent / EVAL_SHARDS  # `ptft prepare` holds documents out beside shards/
        if folder.name == "shards" and (held_out / INDEX_FILE).is_file():
            return RunData(shards.tokenizer(), shards, TokenShards(held_out), False)
        warnings.warn(f"{folder} is a shard folder: evaluation uses training documents", stacklevel=2)
        return RunData(shards.tokenizer(), shards, shards, True)
    root = out / "data"
    train_dir, eval_dir = root / "train", root / "eval"
    key = data_key(cfg, tokenizer_kind)
    if tokenizer is not None:
        key["tokenizer"] = {"given": hashlib.sha256(tokenizer.to_str().encode()).hexdigest()}
    if (train_dir / INDEX_FILE).is_file() and (eval_dir / INDEX_FILE).is_file():
        cached = read_key(root)
        diffs = ["it has no key (built by an older version)"] if cached is None else key_diff(cached, key)
        if diffs and resuming and cached is not None:
            raise RunDataError(
                f"cannot resume in {out}: its data was built with other settings ({'; '.join(diffs)}); "
                "resume with the original settings, or start a new run with another --out"
            )
        if not diffs or resuming:  # an old run's cache: resumed as it is, it cannot be checked
            if diffs:
                warnings.warn(f"{root}: {diffs[0]}; resuming on it unchecked", stacklevel=2)
            tok = PtftTokenizer.from_file(train_dir / TOKENIZER_FILE)
            return RunData(tok, *_open(train_dir, eval_dir), False)
        warnings.warn(
            f"{root} was built with other settings ({'; '.join(diffs)}): rebuilding it", stacklevel=2
        )
    texts = _texts(cfg.data, cfg.text_column)
    every = max(2, round(1 / cfg.eval_fraction)) if cfg.eval_fraction > 0 else 0
    held = {i for i in range(len(texts)) if every and i % every == every - 1}
    if not held:
        raise RunDataError(f"eval_fraction={cfg.eval_fraction} holds out no document of {len(texts)}")
    train_texts = [t for i, t in enumerate(texts) if i not in held]
    if root.exists():
        shutil.rmtree(root)
    tok = tokenizer or train_tokenizer(
        train_texts, tokenizer_config(cfg, tokenizer_kind), progress=cfg.progress
    )
    atomic_write_json(root / KEY_FILE, key)
    shard_cfg = ShardConfig(num_workers=1, progress=cfg.progress)  # bars only past a few seconds
    write_shards([texts[i] for i in sorted(held)], tok, eval_dir, shard_cfg)
    write_shards(train_texts, tok, train_dir, shard_cfg)  # written last: its index marks completion
    return RunData(tok, *_open(train_dir, eval_dir), False)


def _mixture_run_data(cfg: TrainConfig, mixture, tokenizer_kind: str, out: Path, resuming: bool) -> RunData:
    parts: list[RunData] = []
    for i, (path, _) in enumerate(mixture):
        part_cfg = dataclasses.replace(cfg, data=path)
        shared = parts[0].tokenizer if parts and _shard_folder(Path(path)) is None else None
        parts.append(prepare_run_data(part_cfg, tokenizer_kind, out / "data" / f"mix{i}", resuming, shared))
    toks = {p.tokenizer.to_str() for p in parts}
    if len(toks) > 1:
        raise RunDataError(
            f"data mixture: the sources' shard folders use different tokenizers ({cfg.data}); prepare "
            "them with one tokenizer (ptft prepare --tokenizer-from)"
        )
    weights = [w for _, w in mixture]
    train = MixtureShards([p.train for p in parts], weights)
    held = MixtureShards([p.eval for p in parts], weights)
    return RunData(parts[0].tokenizer, train, held, any(p.eval_is_train for p in parts))


def _open(train_dir: Path, eval_dir: Path) -> tuple[TokenShards, TokenShards]:
    return TokenShards(train_dir), TokenShards(eval_dir)


def unigram_entropy(shards: TokenShards, vocab_size: int) -> float:
    """Entropy (nats) of the token frequency distribution of ``shards``: the loss of a model that
    predicts every token from its corpus frequency alone."""
    counts = np.zeros(vocab_size, dtype=np.int64)
    for s in range(shards.num_shards):
        counts += np.bincount(np.asarray(shards.tokens(s), dtype=np.int64), minlength=vocab_size)[:vocab_size]
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------- RNG state of collators
def _encode_rng(g) -> dict:
    if isinstance(g, torch.Generator):
        return {"torch": base64.b64encode(g.get_state().numpy().tobytes()).decode()}
    return {"numpy": g.bit_generator.state}


def _decode_rng(g, state: dict) -> None:
    if isinstance(g, torch.Generator):
        raw = np.frombuffer(base64.b64decode(state["torch"]), dtype=np.uint8).copy()
        g.set_state(torch.from_numpy(raw))
    else:
        g.bit_generator.state = state["numpy"]


def _generators(obj, prefix: str = "") -> dict:
    """Every torch / numpy generator held by ``obj`` or by its attributes (one level down)."""
    found = {}
    for name, value in vars(obj).items():
        if isinstance(value, (torch.Generator, np.random.Generator)):
            found[prefix + name] = value
        elif not prefix and hasattr(value, "__dict__") and not isinstance(value, (torch.Tensor, type)):
            found.update(_generators(value, f"{name}."))
    return found


def bart_noiser(tok: PtftTokenizer, cfg: TrainConfig, seed: int) -> BartNoiser:
    """BART's noising as ``cfg.bart_noise`` selects it, at the configured rates."""
    chosen = {n.strip() for n in cfg.bart_noise.split(",")}
    noise = BartNoiseConfig(
        mask_ratio=cfg.bart_mask_ratio if "mask" in chosen else 0.0,
        delete_ratio=cfg.bart_delete_ratio if "delete" in chosen else 0.0,
        infill_ratio=cfg.infill_ratio if "infill" in chosen else 0.0,
        poisson_lambda=cfg.poisson_lambda,
        permute_sentences="permute" in chosen,
        rotate_document="rotate" in chosen,
        seed=seed,
    )
    return BartNoiser(tok.mask_id, sentence_end_table(tok.backend.get_vocab(), tok.vocab_size), noise)


class BatchSource:
    """Endless collated batches of one objective from ``shards``.

    ``next(batch_size, seq_len)`` returns a dict of tensors for the model; documents are packed
    (separated by the tokenizer's end token where the family uses one) into rows that fill
    ``seq_len`` model positions (T5: encoder positions after corruption). clm / prefix-lm rows
    carry ``doc_ids`` — the decoder attends within each document, positions restart, prefix-lm
    draws a prefix (``prefix_mask``) per document — unless ``cfg.cross_document_attention``: then
    a row is one sequence (prefix-lm: one prefix per row). mlm rows are one sequence unless
    ``cross_document_attention`` is false: then they carry ``doc_ids`` too (the row's ``[CLS]``
    belongs to its first document, the closing ``[SEP]`` to its last).
    """

    def __init__(self, objective: str, shards: TokenShards, tok: PtftTokenizer, cfg: TrainConfig, seed: int):
        self.objective, self.tok, self.cfg = objective, tok, cfg
        sampler = make_sampler(shards, seed=seed)
        if objective == "mlm+nsp":  # sentence pairs, not packed rows
            ends = sentence_end_table(tok.backend.get_vocab(), tok.vocab_size)
            self.stream = NSPStream(sampler, ends, tok.cls_id, tok.sep_id, NSPConfig(cfg.seq_len, seed=seed))
        else:
            eos = {"infill": None}.get(objective, tok.sep_id if objective in MASKED else tok.eos_id)
            self.stream = PackedStream(sampler, cfg.seq_len, eos_id=eos, pad_id=tok.pad_id or 0)
        if objective in MASKED:
            masking = (
                electra_masking(cfg.mlm_probability)
                if objective == "electra"
                else MaskingConfig(mlm_probability=cfg.mlm_probability)
            )
            masking.strategy = cfg.masking_strategy
            self.collator = MLMCollator(
                tok, MLMConfig(masking=masking, seed=seed, nsp=objective == "mlm+nsp")
            )
        elif objective == "clm":
            self.collator = PackedCLMCollator()
        elif objective == "prefix-lm":
            self.collator = PrefixLMCollator(
                pad_id=tok.pad_id, seed=seed, prefix_fraction=cfg.prefix_fraction,
                causal_share=cfg.prefix_lm_causal_share,
            )  # fmt: skip
        elif objective == "span":
            t5 = T5Config(cfg.seq_len, cfg.noise_density, cfg.mean_noise_span_length, seed=seed)
            self.collator = T5SpanCorruptionCollator(tok.sentinel_ids, tok.eos_id, tok.pad_id, t5)
        elif objective in SEQ2SEQ_VARIANTS:
            variant = Seq2SeqVariantConfig(SEQ2SEQ_VARIANTS[objective], cfg.noise_density, seed=seed)
            self.collator = Seq2SeqVariantCollator(
                variant, eos_id=tok.eos_id, pad_id=tok.pad_id, decoder_start_id=tok.pad_id,
                mask_id=tok.mask_id if tok.mask_id is not None else tok.sentinel_ids[0],
                random_ids=np.flatnonzero(~tok.special_mask_table()),
            )  # fmt: skip
        else:  # infill
            self.collator = BartCollator(bart_noiser(tok, cfg, seed), tok.bos_id, tok.eos_id, tok.pad_id)
        self._seq_len = -1

    def _set_seq_len(self, seq_len: int) -> None:
        """Row length for the model length ``seq_len`` (the collators add their special tokens)."""
        if seq_len == self._seq_len:
            return
        self._seq_len = seq_len
        if self.objective == "mlm+nsp":
            self.stream.cfg.max_seq_len = seq_len  # [CLS] A [SEP] B [SEP]
        elif self.objective in MASKED:
            self.stream.seq_len = seq_len - 2  # [CLS] … [SEP]
        elif self.objective == "span":
            c = self.collator
            c.cfg.inputs_length = seq_len
            c.raw_length, c.targets_length = t5_raw_length(
                seq_len, c.cfg.noise_density, c.cfg.mean_noise_span_length
            )
            self.stream.seq_len = c.raw_length
        elif self.objective in SEQ2SEQ_VARIANTS:
            self.stream.seq_len = seq_len - 1  # … </s>
        elif self.objective == "infill":
            self.stream.seq_len = seq_len - 2  # <s> … </s>
            self.collator.max_length = seq_len
        else:
            self.stream.seq_len = seq_len

    def next(self, batch_size: int, seq_len: int) -> dict[str, torch.Tensor]:
        """The model's inputs, plus ``row_segments`` (B,): document pieces per row, a statistic
        for the run summary that :func:`ptft_fast.train.objectives.model_inputs` strips."""
        self._set_seq_len(seq_len)
        if self.objective == "mlm+nsp":
            pairs = self.stream.next_pairs(batch_size)
            if len(pairs) < batch_size:
                raise ValueError(
                    f"the training shards hold no sentence pairs ({self.stream.sampler.shards.path})"
                )
            b = self.collator(pairs)
            return {**b, ROW_SEGMENTS: 1 + b["next_sentence_label"]}  # a random B comes from another document
        ids, doc_ids = self.stream.next_rows(batch_size)
        if len(ids) < batch_size:
            raise ValueError(f"the training shards hold no documents ({self.stream.sampler.shards.path})")
        segments = torch.from_numpy(row_segments(doc_ids))
        if self.objective in ("clm", "prefix-lm"):
            return {**self._lm_batch(ids, doc_ids), ROW_SEGMENTS: segments}
        lengths = (doc_ids >= 0).sum(axis=1)  # padding only ever follows a row's tokens
        if self.objective in (*MASKED, *SEQ2SEQ_VARIANTS):
            b = self.collator.collate_rows(ids, lengths)
            if self.objective == "mlm" and not self.cfg.attends_across_documents:
                b["doc_ids"] = torch.from_numpy(framed_doc_ids(doc_ids, lengths, b["input_ids"].shape[1]))
        else:
            b = self.collator([row[:n] for row, n in zip(ids, lengths)])
        return {**b, ROW_SEGMENTS: segments}

    def _lm_batch(self, ids: np.ndarray, doc_ids: np.ndarray) -> dict[str, torch.Tensor]:
        """clm / prefix-lm inputs of packed rows (B, T): document-aware (``doc_ids``), or one
        sequence per row with ``cross_document_attention``."""
        cross = self.cfg.attends_across_documents
        if self.objective == "prefix-lm":
            if cross:
                b = self.collator.collate_rows(ids, (doc_ids >= 0).sum(axis=1))
                return {k: b[k] for k in ("input_ids", "attention_mask", "labels", "prefix_mask")}
            return self.collator.collate_documents(ids, doc_ids)
        b = self.collator.collate_rows(ids, doc_ids)
        if cross:  # GPT-2's packing: every real token is scored, the first of a document too
            b["labels"] = b["input_ids"].masked_fill(b["attention_mask"] == 0, IGNORE_INDEX)
            return {k: b[k] for k in ("input_ids", "attention_mask", "labels")}
        return {k: b[k] for k in ("input_ids", "attention_mask", "labels", "doc_ids")}

    def state_dict(self) -> dict:
        rngs = {k: _encode_rng(g) for k, g in _generators(self.collator).items()}
        return {"stream": self.stream.state_dict(), "rng": rngs}

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state["stream"])
        gens = _generators(self.collator)
        if set(gens) != set(state["rng"]):
            raise ValueError(f"data state has generators {sorted(state['rng'])}, collator has {sorted(gens)}")
        for k, g in gens.items():
            _decode_rng(g, state["rng"][k])
