"""Objective ↔ model glue: summed losses with their token counts, eval statistics, export.

Per-token normalization: a loss *term* is returned as (sum over labeled tokens, count). The
trainer divides every micro-batch's sum by the count over the whole accumulated batch, so k
micro-batches give exactly the update of one k-times-larger batch whatever their label counts.
The models return the mean over labeled tokens; the sum is that mean × the count (the count of
the same labels the model scores), which is the summed cross-entropy up to float rounding.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ptft_fast.data.electra import discriminator_loss, replace_with_generator_samples
from ptft_fast.data.masking import span_boundaries
from ptft_fast.models import EncoderForMaskedLM, ModelOutput, build_model
from ptft_fast.models.config import ModelConfig
from ptft_fast.models.pretraining_heads import ElectraGenerator, SpanBoundaryHead, generator_config
from ptft_fast.train.data import ROW_SEGMENTS
from ptft_fast.utils.atomic import fix_mode

IGNORE = -100
LM_OBJECTIVES = ("clm", "prefix-lm")  # the model shifts: position t predicts labels[t + 1]
NSP_LABEL = "next_sentence_label"


class ElectraModel(nn.Module):
    """ELECTRA pair: a discriminator (``config``, with the per-token replaced/original head) and
    a generator ``generator_size`` × its width (:func:`generator_config`) that runs on the
    discriminator's embeddings (token, position and type embeddings shared, as in the paper)."""

    def __init__(self, config: ModelConfig, generator_size: float = 1 / 3) -> None:
        super().__init__()
        self.config = config
        self.discriminator = EncoderForMaskedLM(config)
        self.generator = ElectraGenerator(generator_config(config, generator_size), config.hidden_size)
        self.disc_head = nn.Linear(config.hidden_size, 1)

    def generate(self, batch: dict, labels: bool = True) -> ModelOutput:
        """The generator's loss and logits (N, V) at the N labeled positions of ``batch``."""
        enc = self.discriminator.encoder
        emb = enc.embed(batch["input_ids"], batch.get("token_type_ids"))
        return self.generator(
            emb, enc.embed_tokens.weight, batch.get("attention_mask"), batch["labels"] if labels else None
        )


class SpanBertModel(nn.Module):
    """SpanBERT: a BERT/RoBERTa masked LM plus the span-boundary head (:class:`SpanBoundaryHead`),
    both scored against the tied token embedding; loss = MLM + SBO."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.mlm = EncoderForMaskedLM(config)
        self.sbo = SpanBoundaryHead(config)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (autocast losses may be half precision; float64 stays float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# Batch keys that describe the rows rather than feed the model (see BatchSource.next).
STATS_KEYS = (ROW_SEGMENTS,)
# Keys that would hand the model document boundaries inside a packed row; a batch without any of
# them is attended across its documents (every batch key is a model argument).
DOC_BOUNDARY_KEYS = ("cu_seqlens", "doc_ids", "segment_ids")


def model_inputs(batch: dict) -> dict:
    """``batch`` without the statistics keys: what the model is called with."""
    return {k: v for k, v in batch.items() if k not in STATS_KEYS}


def row_stats(batch: dict) -> dict[str, int]:
    """What the rows of ``batch`` hold: rows, document pieces (when the source counts them),
    model positions and real (non-padding) tokens of the encoder / decoder-only input."""
    ids, mask = batch["input_ids"], batch.get("attention_mask")  # no mask: every position is real
    stats = {
        "batches": 1,
        "rows": int(ids.shape[0]),
        "positions": int(ids.numel()),
        "tokens": int(mask.sum()) if mask is not None else int(ids.numel()),
    }
    if ROW_SEGMENTS in batch:
        stats["documents"] = int(batch[ROW_SEGMENTS].sum())
    if "next_sentence_label" in batch:  # mlm+nsp: one [CLS] A [SEP] B [SEP] pair per row
        stats["sentence_pairs"] = int(ids.shape[0])
    stats["separated"] = int(any(k in batch for k in DOC_BOUNDARY_KEYS))
    return stats


def add_stats(total: dict[str, int], stats: dict[str, int]) -> dict[str, int]:
    """``total`` plus ``stats``, key by key (a sum of :func:`row_stats`)."""
    return {k: total.get(k, 0) + stats.get(k, 0) for k in {*total, *stats}}


def build_for_objective(
    objective: str, config: ModelConfig, electra_generator_size: float = 1 / 3
) -> nn.Module:
    """The module an objective trains: the model (mlm+nsp: ``config.nsp_head`` set by the run's
    model config), or ELECTRA's / SpanBERT's pair of modules."""
    if objective == "electra":
        return ElectraModel(config, electra_generator_size)
    if objective == "spanbert":
        return SpanBertModel(config)
    return build_model(config)


def real_tokens(batch: dict, mask: str = "attention_mask", ids: str = "input_ids") -> int:
    """Non-padding tokens of a batch; no mask means no padding (the trainer drops all-true masks)."""
    return int(batch[mask].sum()) if mask in batch else batch[ids].numel()


def label_counts(objective: str, batch: dict) -> dict[str, int]:
    """Tokens each loss term of ``batch`` is averaged over (known before the forward)."""
    labels = batch["labels"]
    if objective in LM_OBJECTIVES:
        labels = labels[:, 1:]
    counts = {"lm": int((labels != IGNORE).sum())}
    if objective == "electra":
        counts["disc"] = real_tokens(batch)
    elif objective == "spanbert":
        counts["sbo"] = counts["lm"]
    elif objective == "mlm+nsp":
        counts["nsp"] = int((batch[NSP_LABEL] != IGNORE).sum())
    return counts


def loss_sums(
    objective: str, model: nn.Module, batch: dict, sample_gen: torch.Generator | None = None
) -> dict[str, torch.Tensor]:
    """Summed loss per term (``lm``; ``disc`` for ELECTRA, ``sbo`` for SpanBERT, ``nsp`` for
    mlm+nsp); a term with no labeled token is absent."""
    counts = label_counts(objective, batch)
    batch = model_inputs(batch)
    if objective == "electra":
        return _electra_sums(model, batch, counts, sample_gen)
    if objective == "spanbert":
        return _spanbert_sums(model, batch, counts)
    if objective == "mlm+nsp":
        nsp_labels = batch.pop(NSP_LABEL)
        out = model(**batch)  # the NSP head needs every position: the full path, MLM loss only
        nsp = nn.functional.cross_entropy(out.nsp_logits.float(), nsp_labels, ignore_index=IGNORE)
        sums = {"nsp": nsp * counts["nsp"]}
        if counts["lm"]:
            sums["lm"] = _upcast(out.loss) * counts["lm"]
        return sums
    if counts["lm"] == 0:
        return {}
    return {"lm": _upcast(model(**batch).loss) * counts["lm"]}


def _electra_sums(model, batch: dict, counts: dict, sample_gen) -> dict[str, torch.Tensor]:
    gen_out = model.generate(batch)
    rtd = replace_with_generator_samples(
        batch["input_ids"], batch["labels"], gen_out.logits, batch["attention_mask"], generator=sample_gen
    )
    h = model.discriminator.encoder(rtd["disc_input_ids"], batch["attention_mask"], batch["token_type_ids"])
    disc = discriminator_loss(model.disc_head(h).squeeze(-1), rtd["disc_labels"])
    out = {"disc": _upcast(disc) * counts["disc"]}
    if counts["lm"]:
        out["lm"] = _upcast(gen_out.loss) * counts["lm"]
    return out


def _spanbert_sums(model, batch: dict, counts: dict) -> dict[str, torch.Tensor]:
    if counts["lm"] == 0:
        return {}
    net, labels = model.mlm, batch["labels"]
    h = net.encoder(batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"))
    weight = net.encoder.embed_tokens.weight
    start, end = span_boundaries(labels != IGNORE)
    mlm = net.mlm.loss(h, weight, labels)
    sbo = model.sbo.loss(h, weight, start, end, labels)
    return {"lm": _upcast(mlm) * counts["lm"], "sbo": _upcast(sbo) * counts["sbo"]}


@torch.no_grad()
def eval_sums(objective: str, model: nn.Module, batch: dict) -> dict[str, float]:
    """loss_sum, tokens, correct (argmax == label on the scored tokens) for one eval batch, of the
    LM / MLM term (ELECTRA: the generator's); mlm+nsp adds nsp_pairs and nsp_correct."""
    inputs = model_inputs(batch)
    extra = {}
    if objective == "mlm+nsp":
        nsp_labels = inputs.pop(NSP_LABEL)
        out = model(**inputs, return_logits=True)
        extra = {
            "nsp_pairs": len(nsp_labels),
            "nsp_correct": int((out.nsp_logits.argmax(-1) == nsp_labels).sum()),
        }
    elif objective == "electra":
        out = model.generate(inputs, labels=False)
    else:
        out = (model.mlm if objective == "spanbert" else model)(**inputs, return_logits=True)
    logits, labels = out.logits, batch["labels"]
    if objective in LM_OBJECTIVES:
        logits, labels = logits[:, :-1], labels[:, 1:]
    keep = labels != IGNORE
    n = int(keep.sum())
    scored = logits[keep]
    correct = int((scored.argmax(-1) == labels[keep]).sum())
    loss_sum = float(nn.functional.cross_entropy(scored.float(), labels[keep], reduction="sum")) if n else 0.0
    return {"loss_sum": loss_sum, "tokens": n, "correct": correct, **extra}


def token_counts(objective: str, batch: dict) -> dict[str, int]:
    """Real (non-padding) tokens through the encoder/decoder stacks and the vocab head; the
    longest row lengths (for the attention FLOPs)."""
    counts = label_counts(objective, batch)
    enc = real_tokens(batch)
    seq = batch["input_ids"].shape[1]
    dec, dec_len = 0, 0
    if "decoder_input_ids" in batch:
        labels = batch["labels"]
        dec, dec_len = int((labels != IGNORE).sum()), labels.shape[1]
    return {"enc": enc, "enc_len": seq, "dec": dec, "dec_len": dec_len, "head": counts["lm"]}


# ---------------------------------------------------------------- HF export / import
def export_model(model: nn.Module, path: str | os.PathLike) -> Path:
    """HF-format folder: the model (ELECTRA: the discriminator, plus its generator and RTD head in
    ``electra_generator.safetensors`` / ``electra_head.safetensors``; SpanBERT: the masked LM,
    plus ``sbo_head.safetensors``)."""
    from ptft_fast.hf import save_pretrained

    root = Path(path)
    if isinstance(model, ElectraModel):
        save_pretrained(model.discriminator, root)
        _save_module(model.generator, root / "electra_generator.safetensors")
        _save_module(model.disc_head, root / "electra_head.safetensors")
        return root
    if isinstance(model, SpanBertModel):
        save_pretrained(model.mlm, root)
        _save_module(model.sbo, root / "sbo_head.safetensors")
        return root
    return save_pretrained(model, root)


def _save_module(module: nn.Module, file: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}, file)
    fix_mode(file)  # safetensors creates 0600 files


def import_model(model: nn.Module, path: str | os.PathLike) -> None:
    """Load the weights written by :func:`export_model` into ``model`` (same config)."""
    from safetensors.torch import load_file

    from ptft_fast.hf import load_pretrained

    root = Path(path)
    if isinstance(model, ElectraModel):
        model.disc_head.load_state_dict(load_file(root / "electra_head.safetensors"))
        model.generator.load_state_dict(load_file(root / "electra_generator.safetensors"))
        _copy(model.discriminator, root)
        return
    if isinstance(model, SpanBertModel):
        model.sbo.load_state_dict(load_file(root / "sbo_head.safetensors"))
        _copy(model.mlm, root)
        return
    loaded, _ = load_pretrained(root)
    model.load_state_dict(loaded.state_dict())
    del loaded


def _copy(module: nn.Module, root: Path) -> None:
    from ptft_fast.hf import load_pretrained

    loaded, _ = load_pretrained(root)
    module.load_state_dict(loaded.state_dict())
