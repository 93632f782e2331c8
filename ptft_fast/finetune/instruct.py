"""Instruction tuning for causal LMs: prompt/response records through a template, loss on the
response tokens only, and packing of short records into one row without cross-record attention
(varlen attention over cu_seqlens, positions restarting at every record)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ptft_fast.models.blocks import Packing, run_layers
from ptft_fast.models.heads import IGNORE_INDEX

TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


@dataclass
class Record:
    ids: list[int]  # prompt + response (+ eos)
    labels: list[int]  # IGNORE_INDEX on the prompt part


def encode_record(
    tokenizer, prompt: str, response: str, template: str = TEMPLATE, max_length: int = 256
) -> Record:
    """Template the prompt; labels copy the response tokens (and eos) only."""
    p = tokenizer.encode(template.format(prompt=prompt))
    r = tokenizer.encode(response)
    if tokenizer.eos_id is not None:
        r = [*r, tokenizer.eos_id]
    ids = (p + r)[:max_length]
    labels = ([IGNORE_INDEX] * len(p) + r)[:max_length]
    return Record(ids, labels)


def pack(records: list[Record], max_length: int) -> list[list[Record]]:
    """Greedy first-fit: groups of records whose total length fits ``max_length`` (a longer
    record gets a group of its own)."""
    groups: list[list[Record]] = []
    sizes: list[int] = []
    for r in sorted(records, key=lambda r: -len(r.ids)):
        for i, s in enumerate(sizes):
            if s + len(r.ids) <= max_length:
                groups[i].append(r)
                sizes[i] += len(r.ids)
                break
        else:
            groups.append([r])
            sizes.append(len(r.ids))
    return groups


def packed_batch(groups: list[list[Record]]) -> dict[str, torch.Tensor]:
    """All records of all groups flattened: input_ids (total,), labels (total,), position_ids
    (total,) restarting per record, cu_seqlens (R + 1,) int32 over records."""
    recs = [r for g in groups for r in g]
    lens = torch.tensor([len(r.ids) for r in recs])
    return {
        "input_ids": torch.tensor([t for r in recs for t in r.ids]),
        "labels": torch.tensor([t for r in recs for t in r.labels]),
        "position_ids": torch.cat([torch.arange(n) for n in lens.tolist()]),
        "cu_seqlens": F.pad(lens.cumsum(0), (1, 0)).to(torch.int32),
    }


def packed_causal_lm_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token loss of a ptft_fast GPT over packed records: each record attends only to
    itself (causal varlen attention) and is scored only within itself (no label crosses a
    record boundary). Equals the token-weighted mean of the records' separate losses."""
    ids, labels, pos, cu = batch["input_ids"], batch["labels"], batch["position_ids"], batch["cu_seqlens"]
    lens = cu[1:] - cu[:-1]
    packing = Packing(
        indices=None, cu_seqlens=cu, max_seqlen=int(lens.max()), batch=len(lens), seqlen=int(lens.max())
    )
    x = model.embed_tokens(ids) + model.embed_positions(pos)  # (total, C)
    if model.training and model.config.dropout > 0.0:
        x = F.dropout(x, model.config.dropout, training=True)
    x, _ = run_layers(
        model.layers, x, checkpointing=model.config.gradient_checkpointing, causal=True, packing=packing
    )
    h = model.final_norm(x)
    return model.lm_head.loss(h[None], model.embed_tokens.weight, shifted_targets(labels, cu)[None])


def shifted_targets(labels: torch.Tensor, cu_seqlens: torch.Tensor) -> torch.Tensor:
    """Next-token targets of a flat packed row (total,): labels shifted left by one, each record's
    last position IGNORE_INDEX (no target crosses a record boundary)."""
    target = torch.cat([labels[1:], labels.new_full((1,), IGNORE_INDEX)])
    target[(cu_seqlens[1:] - 1).long()] = IGNORE_INDEX
    return target


def packed_rows(groups: list[list[Record]], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """Groups as fixed-width rows for the fine-tuning loop (which slices (N, ...) tensors):
    input_ids (N, L) padded with ``pad_id``, labels (N, L) IGNORE_INDEX on padding, position_ids
    (N, L) restarting per record, segment_ids (N, L) = 1, 2, ... per record of a row, 0 on padding."""
    width = max(sum(len(r.ids) for r in g) for g in groups)
    ids = torch.full((len(groups), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    pos, seg = torch.zeros_like(ids), torch.zeros_like(ids)
    for i, g in enumerate(groups):
        at = 0
        for j, r in enumerate(g, start=1):
            n = len(r.ids)
            ids[i, at : at + n] = torch.tensor(r.ids)
            labels[i, at : at + n] = torch.tensor(r.labels)
            pos[i, at : at + n] = torch.arange(n)
            seg[i, at : at + n] = j
            at += n
    return {"input_ids": ids, "labels": labels, "position_ids": pos, "segment_ids": seg}


def flatten_rows(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A batch of :func:`packed_rows` (B, L) → the flat varlen layout of :func:`packed_batch`:
    padding dropped, one cu_seqlens entry per record (records never span rows)."""
    seg = batch["segment_ids"]
    keep = seg.flatten() > 0
    row = torch.arange(seg.shape[0], device=seg.device)[:, None].expand_as(seg).flatten()[keep]
    s = seg.flatten()[keep]
    starts = torch.ones_like(s, dtype=torch.bool)
    starts[1:] = (s[1:] != s[:-1]) | (row[1:] != row[:-1])
    begin = starts.nonzero().flatten()
    cu = torch.cat([begin, begin.new_tensor([s.numel()])]).to(torch.int32)
    return {
        "input_ids": batch["input_ids"].flatten()[keep],
        "labels": batch["labels"].flatten()[keep],
        "position_ids": batch["position_ids"].flatten()[keep],
        "cu_seqlens": cu,
    }


def rows_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean response-token loss of a batch of packed rows (loss_fn for ``finetune.loop.train``)."""
    return packed_causal_lm_loss(model, flatten_rows(batch))


def evaluate_instruct(model, data: dict[str, torch.Tensor], batch_size: int = 16) -> dict[str, float]:
    """Token-weighted mean response loss and perplexity over all rows of ``data``."""
    import math

    total, count = 0.0, 0
    for i in range(0, data["input_ids"].shape[0], batch_size):
        b = {k: v[i : i + batch_size] for k, v in data.items()}
        flat = flatten_rows(b)
        n = int((shifted_targets(flat["labels"], flat["cu_seqlens"]) != IGNORE_INDEX).sum())
        if n:
            total += float(packed_causal_lm_loss(model, flat)) * n
            count += n
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}


def padded_rows(records: list[Record], pad_id: int = 0) -> dict[str, torch.Tensor]:
    """One record per row, right-padded: input_ids, labels (IGNORE_INDEX on the prompt and the
    padding), attention_mask, each (N, L). For models that must see whole rows through their own
    forward (prefix and prompt tuning wrap it; packing goes around it)."""
    width = max(len(r.ids) for r in records)
    ids = torch.full((len(records), width), pad_id, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(records):
        ids[i, : len(r.ids)] = torch.tensor(r.ids)
        labels[i, : len(r.ids)] = torch.tensor(r.labels)
        mask[i, : len(r.ids)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def padded_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean response-token loss of :func:`padded_rows` through the model's forward (shifted there)."""
    return model(batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss


def evaluate_padded(model, data: dict[str, torch.Tensor], batch_size: int = 16) -> dict[str, float]:
    """Token-weighted mean response loss and perplexity over :func:`padded_rows`."""
    import math

    total, count = 0.0, 0
    for i in range(0, data["input_ids"].shape[0], batch_size):
        b = {k: v[i : i + batch_size] for k, v in data.items()}
        n = int((b["labels"][:, 1:] != IGNORE_INDEX).sum())  # position t is scored against t + 1
        if n:
            total += float(padded_loss(model, b)) * n
            count += n
    loss = total / max(count, 1)
    return {"loss": loss, "perplexity": math.exp(min(loss, 50.0))}
