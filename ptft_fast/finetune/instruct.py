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
    # next-token targets: shift left within the flat row, then blank each record's last position
    target = torch.cat([labels[1:], labels.new_full((1,), IGNORE_INDEX)])
    target[(cu[1:] - 1).long()] = IGNORE_INDEX
    return model.lm_head.loss(h[None], model.embed_tokens.weight, target[None])
