"""Encoder-only models: post-norm BERT / RoBERTa with learned absolute positions and token types.

``Encoder`` is the embedding + layer stack; ``EncoderForMaskedLM`` adds the tied MLM head (and,
with ``config.nsp_head``, BERT's pooler + next-sentence head). With ``config.varlen`` a padded
batch runs padding-free: tokens are packed, attention uses cu_seqlens, and outputs are repadded.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ptft_fast.models.blocks import (
    Layer,
    effective_mask,
    init_weights,
    make_norm,
    run_layers,
)
from ptft_fast.models.config import ModelConfig
from ptft_fast.models.heads import IGNORE_INDEX, MLMHead, NSPHead
from ptft_fast.models.state import ModelOutput, Packing, document_positions
from ptft_fast.ops.graph_mode import in_graph


def roberta_positions(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """RoBERTa position ids: non-pad tokens count up from pad_token_id + 1, pads get pad_token_id."""
    real = input_ids.ne(pad_token_id).int()
    return (torch.cumsum(real, dim=1) * real).long() + pad_token_id


class Encoder(nn.Module):
    """Embeddings (token + position + type, LayerNorm, dropout) and post-norm layers."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config.hidden_size
        self.embed_tokens = nn.Embedding(config.vocab_size, c, padding_idx=config.pad_token_id)
        self.embed_positions = nn.Embedding(config.max_position_embeddings, c)
        self.embed_types = nn.Embedding(config.type_vocab_size, c) if config.type_vocab_size > 0 else None
        self.embed_norm = make_norm(c, config.norm_eps)
        self.layers = nn.ModuleList(
            Layer(config, cross=False, pre_norm=False, rms=False, bias=True) for _ in range(config.num_layers)
        )

    def embed(
        self,
        input_ids: torch.Tensor,
        token_type_ids: torch.Tensor | None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """position_ids: (B, T) positions (None: 0..T-1; RoBERTa's from the padding), e.g. restarting
        per document of a packed row; RoBERTa's offset (pad_token_id + 1) is added to given ones."""
        cfg = self.config
        offset = cfg.pad_token_id + 1 if cfg.arch == "roberta" else 0
        if input_ids.shape[1] + offset > cfg.max_position_embeddings:
            raise ValueError(
                f"{cfg.arch}: sequence length {input_ids.shape[1]} (+ position offset {offset}) exceeds "
                f"max_position_embeddings={cfg.max_position_embeddings}"
            )
        if position_ids is not None:
            positions = position_ids + offset
        elif cfg.arch == "roberta":
            positions = roberta_positions(input_ids, cfg.pad_token_id)
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None, :]
        x = self.embed_tokens(input_ids) + self.embed_positions(positions)
        if self.embed_types is not None:
            if token_type_ids is None:
                x = x + self.embed_types.weight[0]
            else:
                x = x + self.embed_types(token_type_ids)
        return self.embed_norm(x, dropout_p=0.0)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        *,
        packing: Packing | None = None,
        position_ids: torch.Tensor | None = None,
        keep: torch.Tensor | None = None,
        hidden_states: list[torch.Tensor] | None = None,
        attentions: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """input_ids: (B, T); attention_mask: (B, T) 1/True = token. Returns (B, T, C), or packed
        (total, C) when ``packing`` is given (padding-free path). ``hidden_states`` /
        ``attentions`` (lists, padded path, no ``keep``) receive every layer's input and
        attention probabilities.

        keep: (B, T) bool. With it the last layer is computed only at kept token positions (its
        keys/values still come from every token) and the result is (n_kept, C), in row-major
        order of the kept tokens: the masked-token loss needs no other rows.
        """
        x = self.embed(input_ids, token_type_ids, position_ids)
        if self.training and self.config.dropout > 0.0:
            x = nn.functional.dropout(x, self.config.dropout, training=True)
        kw: dict = {"hidden_states": hidden_states, "attentions": attentions}
        if packing is not None:
            x = packing.unpad(x)
            kw["packing"] = packing
        else:
            kw["key_padding_mask"] = effective_mask(attention_mask)
        checkpointing = self.config.gradient_checkpointing
        body = self.layers if keep is None else self.layers[:-1]
        x, _ = run_layers(body, x, checkpointing=checkpointing, **kw)
        if keep is None:
            return x
        if attention_mask is None:
            token_mask = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            token_mask = attention_mask.bool()
        if packing is None:
            packing = Packing.from_mask(token_mask)
            x = packing.unpad(x)
        keep = keep & token_mask
        queries = packing.select(keep)  # grouped as the keys are: by row, or by document
        rows = packing.unpad(keep).nonzero().squeeze(1)
        last = self.layers[-1]
        if checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(last.forward_rows, x, rows, packing, queries, use_reentrant=False)
        return last.forward_rows(x, rows, packing, queries)

    def forward_packed(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor,
        packing: Packing,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Sequences packed end to end, no padding anywhere: input_ids, position_ids (each
        sequence's own positions; RoBERTa's start at pad_token_id + 1) and token_type_ids are
        (total,); ``packing.cu_seqlens`` (N + 1,) delimits the sequences, each attending only to
        itself. Returns (total, C), equal to the padded forward's states at the real tokens."""
        x = self.embed_tokens(input_ids) + self.embed_positions(position_ids)
        if self.embed_types is not None:
            x = x + (
                self.embed_types.weight[0] if token_type_ids is None else self.embed_types(token_type_ids)
            )
        x = self.embed_norm(x, dropout_p=0.0)
        if self.training and self.config.dropout > 0.0:
            x = nn.functional.dropout(x, self.config.dropout, training=True)
        x, _ = run_layers(self.layers, x, checkpointing=self.config.gradient_checkpointing, packing=packing)
        return x


class EncoderForMaskedLM(nn.Module):
    """BERT / RoBERTa with the tied MLM head (and optional NSP head)."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if config.arch not in ("bert", "roberta"):
            raise ValueError(f"EncoderForMaskedLM: config.arch must be bert or roberta, got {config.arch!r}")
        self.config = config
        self.encoder = Encoder(config)
        self.mlm = MLMHead(config)
        self.nsp = NSPHead(config) if config.nsp_head else None
        init_weights(self, config.initializer_range)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        next_sentence_label: torch.Tensor | None = None,
        *,
        doc_ids: torch.Tensor | None = None,
        return_logits: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """input_ids, attention_mask, token_type_ids, labels: (B, T); next_sentence_label: (B,).

        ``output_hidden_states`` / ``output_attentions``: also return the embeddings' and every
        layer's output (``all_hidden_states``, N + 1 tensors (B, T, C)) and every layer's attention
        probabilities (``attentions``, (B, H, T, T)), as transformers does; such a call runs the
        padded path (no varlen packing, no labeled-rows-only shortcut).

        doc_ids: (B, T) int, the document of each token of rows of packed documents (< 0: padding;
        replaces attention_mask): each document attends only to itself, on the padding-free path,
        with positions restarting per document (eager only, no per-layer outputs).

        labels hold token ids at masked positions and IGNORE_INDEX (-100) elsewhere. The full
        (B, T, V) logits are computed when there are no labels or ``return_logits=True``. The
        loss alone (no NSP head) touches only the labeled rows: the last layer, the MLM transform
        and the vocab projection run on them alone, and hidden_states is None (labels at padding
        positions are not scored there). Padding positions of hidden_states are zeros on the
        varlen path.
        """
        if return_logits is None:
            return_logits = labels is None
        attention_mask = effective_mask(attention_mask)
        static = in_graph()  # no packing and no labeled-rows-only last layer: both need host reads
        collect = output_hidden_states or output_attentions  # per-layer outputs in the padded form
        varlen = self.config.varlen and attention_mask is not None and not static and not collect
        packing = Packing.from_mask(attention_mask) if varlen else None
        positions = None
        if doc_ids is not None:  # packed documents: each attends only to itself, positions restart
            if doc_ids.shape != input_ids.shape:
                raise ValueError(
                    f"doc_ids shape {tuple(doc_ids.shape)} must equal input_ids shape {tuple(input_ids.shape)}"
                )
            if static or collect:
                raise ValueError("doc_ids (rows of packed documents) need the eager, padding-free path")
            packing, positions = Packing.from_documents(doc_ids), document_positions(doc_ids)
            attention_mask = doc_ids >= 0
        weight = self.encoder.embed_tokens.weight
        keep = labels != IGNORE_INDEX if labels is not None and not static else None
        if keep is not None and not return_logits and self.nsp is None and not collect and bool(keep.any()):
            # Loss only: the last layer runs at the labeled positions alone (exact for the loss).
            h = self.encoder(
                input_ids, attention_mask, token_type_ids, packing=packing, position_ids=positions, keep=keep
            )
            if attention_mask is not None:
                keep = keep & attention_mask
            return ModelOutput(loss=self.mlm.loss(h, weight, labels[keep]))
        states = [] if output_hidden_states else None
        attentions = [] if output_attentions else None
        h = self.encoder(
            input_ids,
            attention_mask,
            token_type_ids,
            packing=packing,
            position_ids=positions,
            hidden_states=states,
            attentions=attentions,
        )
        loss = None
        if labels is not None:
            tok_labels = packing.unpad(labels) if packing is not None else labels
            loss = self.mlm.loss(h, weight, tok_labels)
        if packing is not None:
            h = packing.repad(h)
        nsp_logits = self.nsp(h) if self.nsp is not None else None
        if next_sentence_label is not None:
            if nsp_logits is None:
                raise ValueError(
                    "next_sentence_label given but the model has no NSP head (config.nsp_head=False)"
                )
            nsp_loss = nn.functional.cross_entropy(nsp_logits, next_sentence_label, ignore_index=IGNORE_INDEX)
            loss = nsp_loss if loss is None else loss + nsp_loss
        logits = self.mlm.logits(h, weight) if return_logits else None
        return ModelOutput(
            loss=loss,
            logits=logits,
            hidden_states=h,
            nsp_logits=nsp_logits,
            all_hidden_states=None if states is None else (*states, h),
            attentions=None if attentions is None else tuple(attentions),
        )
