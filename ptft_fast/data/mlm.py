"""Masked-LM collator (BERT / RoBERTa / SpanBERT recipes), with optional NSP labels.

Examples are raw token-id sequences (the collator adds ``[CLS] … [SEP]``) or dicts with
``input_ids`` that already hold the special tokens (e.g. from :func:`build_nsp_examples`), optional
``token_type_ids`` and ``next_sentence_label``.

Batch: ``input_ids`` (B, T) corrupted, ``attention_mask`` (B, T), ``token_type_ids`` (B, T),
``labels`` (B, T) original ids on chosen positions, -100 elsewhere; with NSP
``next_sentence_label`` (B,) (0 = B follows A, 1 = B is random); with ``fixed_count``
``masked_positions`` (B, P) and ``masked_labels`` (B, P) (-100 padded), P = ceil(p · T).
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from ptft_fast.data.collate import (
    IGNORE_INDEX,
    as_id_list,
    attention_mask_from_lengths,
    pad_rows,
    pad_sequences,
)
from ptft_fast.data.masking import MaskingConfig, choose_tokens, corrupt, max_predictions
from ptft_fast.data.tokenizer import PtftTokenizer


@dataclass
class MLMConfig:
    """Collator settings; see :class:`MaskingConfig` for the masking recipe."""

    masking: MaskingConfig = field(default_factory=MaskingConfig)
    dynamic: bool = True  # new masks every batch (RoBERTa); False = same mask for the same example
    nsp: bool = False  # emit next_sentence_label (examples must carry it)
    max_length: int | None = None  # pad to exactly this (static shapes); default: longest in batch
    seed: int = 0


class MLMCollator:
    """Callable: list of examples → dict of tensors (see module docstring)."""

    def __init__(self, tokenizer: PtftTokenizer, cfg: MLMConfig | None = None) -> None:
        self.cfg = cfg or MLMConfig()
        for role in ("mask_id", "pad_id", "cls_id", "sep_id"):
            if getattr(tokenizer, role) is None:
                raise ValueError(f"MLM needs a tokenizer with {role.removesuffix('_id')} token")
        self.mask_id, self.pad_id = tokenizer.mask_id, tokenizer.pad_id
        self.cls_id, self.sep_id = tokenizer.cls_id, tokenizer.sep_id
        self.special = tokenizer.special_mask_table()
        self.word_start = tokenizer.word_start_table()
        self.random_ids = torch.from_numpy(np.flatnonzero(~self.special))
        self.gen = torch.Generator().manual_seed(self.cfg.seed)

    def _rows(self, examples: Sequence) -> tuple[list[list[int]], list[list[int]], list[int] | None]:
        ids, types, nsp = [], [], []
        for ex in examples:
            if isinstance(ex, dict):
                row = as_id_list(ex["input_ids"])
                types.append(as_id_list(ex["token_type_ids"]) if "token_type_ids" in ex else [0] * len(row))
                if self.cfg.nsp:
                    if "next_sentence_label" not in ex:
                        raise ValueError("nsp=True needs examples with 'next_sentence_label'")
                    nsp.append(int(ex["next_sentence_label"]))
            else:
                if self.cfg.nsp:
                    raise ValueError("nsp=True needs dict examples from build_nsp_examples")
                row = [self.cls_id, *as_id_list(ex), self.sep_id]
                types.append([0] * len(row))
            ids.append(row)
        return ids, types, nsp if self.cfg.nsp else None

    def _mask(self, input_ids: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.cfg.masking
        if self.cfg.dynamic:
            chosen = choose_tokens(input_ids, candidates, m, self.gen, self.word_start)
            return corrupt(input_ids, chosen, m, self.gen, self.mask_id, self.random_ids)
        outs, labels = [], []
        for b in range(input_ids.shape[0]):
            # static masking: the example's content (and the seed) fixes its mask
            key = zlib.crc32(input_ids[b][candidates[b]].numpy().astype(np.int64).tobytes())
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + key)
            chosen = choose_tokens(input_ids[b : b + 1], candidates[b : b + 1], m, g, self.word_start)
            o, lab = corrupt(input_ids[b : b + 1], chosen, m, g, self.mask_id, self.random_ids)
            outs.append(o)
            labels.append(lab)
        return torch.cat(outs), torch.cat(labels)

    def __call__(self, examples: Sequence) -> dict[str, torch.Tensor]:
        ids, types, nsp = self._rows(examples)
        input_ids = pad_sequences(ids, self.pad_id, self.cfg.max_length)
        t = input_ids.shape[1]
        attention_mask = attention_mask_from_lengths([len(r) for r in ids], t)
        return self._finish(input_ids, attention_mask, pad_sequences(types, 0, t), nsp)

    def collate_rows(self, body: np.ndarray, lengths: np.ndarray) -> dict[str, torch.Tensor]:
        """The batch of ``__call__`` for raw sequences given as one array: body (B, L) int64 with
        row b's tokens in ``body[b, :lengths[b]]``; adds ``[CLS] … [SEP]`` with array operations."""
        if self.cfg.nsp:
            raise ValueError("nsp=True needs dict examples from build_nsp_examples")
        lengths = np.asarray(lengths, dtype=np.int64)
        b = len(body)
        inner = None if self.cfg.max_length is None else self.cfg.max_length - 2
        inner_ids = pad_rows(body, lengths, self.pad_id, inner)
        t = inner_ids.shape[1] + 2
        ids = np.full((b, t), self.pad_id, dtype=np.int64)
        ids[:, 0] = self.cls_id
        ids[:, 1:-1] = inner_ids
        pos = np.arange(t)
        ids[np.arange(b), lengths + 1] = self.sep_id
        attention_mask = torch.from_numpy((pos[None, :] < (lengths + 2)[:, None]).astype(np.int64))
        return self._finish(torch.from_numpy(ids), attention_mask, torch.zeros(b, t, dtype=torch.long), None)

    def _finish(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        nsp: list[int] | None,
    ) -> dict[str, torch.Tensor]:
        t = input_ids.shape[1]
        candidates = torch.from_numpy(~self.special[input_ids.numpy()]) & attention_mask.bool()
        masked, labels = self._mask(input_ids, candidates)
        batch = {
            "input_ids": masked,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
            "labels": labels,
        }
        if nsp is not None:
            batch["next_sentence_label"] = torch.tensor(nsp, dtype=torch.long)
        if self.cfg.masking.fixed_count:
            batch.update(
                gather_masked_positions(labels, max_predictions(t, self.cfg.masking.mlm_probability))
            )
        return batch


def gather_masked_positions(labels: torch.Tensor, num_slots: int) -> dict[str, torch.Tensor]:
    """Static-shape view of the predictions: masked_positions (B, P) (0-padded) and
    masked_labels (B, P) (-100-padded), P = ``num_slots``."""
    chosen = labels != IGNORE_INDEX
    counts = chosen.sum(1)
    if len(counts) and int(counts.max()) > num_slots:
        i = int(counts.argmax())
        raise ValueError(f"row {i} has {int(counts[i])} predictions, more than the {num_slots} slots")
    # chosen positions first, in order (a stable sort of "not chosen")
    order = torch.sort((~chosen).to(torch.uint8), dim=1, stable=True).indices[:, :num_slots]
    filled = torch.arange(order.shape[1])[None, :] < counts[:, None]
    positions = torch.zeros(labels.shape[0], num_slots, dtype=torch.long)
    mlabels = torch.full((labels.shape[0], num_slots), IGNORE_INDEX, dtype=torch.long)
    positions[:, : order.shape[1]] = order.masked_fill(~filled, 0)
    mlabels[:, : order.shape[1]] = labels.gather(1, order).masked_fill(~filled, IGNORE_INDEX)
    return {"masked_positions": positions, "masked_labels": mlabels}
