"""``ptft finetune --pack`` for classification and regression on BERT/RoBERTa: each step's examples
run packed end to end — the real tokens only, one varlen sequence per example
(:meth:`TaskModel.forward_packed`) — instead of as a padded (B, T) batch. Loss and logits equal the
padded forward's; no position of the step is padding."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def pack_examples(batch: dict[str, torch.Tensor], position_offset: int = 0) -> dict[str, torch.Tensor]:
    """A padded batch (input_ids, attention_mask, token_type_ids: (B, T); labels (B,)) → the
    packed layout: input_ids, position_ids, token_type_ids (total,), cu_seqlens (B + 1,) int32,
    labels (B,). ``position_offset``: where a sequence's positions start (RoBERTa: pad id + 1)."""
    mask = batch["attention_mask"].bool()
    out = {
        "input_ids": batch["input_ids"][mask],
        "position_ids": (mask.long().cumsum(1) - 1)[mask] + position_offset,
        "cu_seqlens": F.pad(mask.sum(1).cumsum(0), (1, 0)).to(torch.int32),
    }
    if "token_type_ids" in batch:
        out["token_type_ids"] = batch["token_type_ids"][mask]
    if "labels" in batch:
        out["labels"] = batch["labels"]
    return out


def position_offset(model) -> int:
    """RoBERTa counts positions from pad_token_id + 1, BERT from 0."""
    backbone = model.backbone
    cfg = getattr(backbone, "config", None) or backbone.model.config
    return cfg.pad_token_id + 1 if cfg.arch == "roberta" else 0


def packed_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """loss_fn for ``finetune.loop.train``: the batch's mean loss through the packed forward."""
    return model.forward_packed(**pack_examples(batch, position_offset(model)))["loss"]
