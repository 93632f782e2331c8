"""Encoder-decoder models: T5 (v1.0 / v1.1) and BART.

T5: pre-norm RMS layers without biases, relative position bias (log buckets, one table per
stack, shared by its layers), unscaled attention, final RMS norm per stack; v1.0 scales the
decoder output by d_model**-0.5 before the tied head, v1.1 has a gated-GELU MLP and its own head.
BART: post-norm LayerNorm layers with biases, learned positions offset by 2, layernorm_embedding,
optional sqrt(d_model) embedding scale, tied head plus final_logits_bias.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ptft_fast.models.blocks import (
    Layer,
    effective_mask,
    embed_scale,
    init_weights,
    make_norm,
    run_layers,
)
from ptft_fast.models.config import ModelConfig
from ptft_fast.models.heads import IGNORE_INDEX, LMHead
from ptft_fast.models.state import KVCache, ModelOutput

BART_POSITION_OFFSET = 2  # BART's learned position table starts 2 rows in (a fairseq legacy)


def relative_position_bucket(
    relative_position: torch.Tensor, *, bidirectional: bool, num_buckets: int, max_distance: int
) -> torch.Tensor:
    """T5 bucket of each (key - query) distance: exact for small distances, log-spaced up to
    max_distance, then the last bucket. Bidirectional splits the buckets by sign; otherwise
    only the past (key <= query) is distinguished and future positions share bucket 0."""
    bucket = torch.zeros_like(relative_position)
    if bidirectional:
        num_buckets //= 2
        bucket = (relative_position > 0).long() * num_buckets
        distance = relative_position.abs()
    else:
        distance = (-relative_position).clamp(min=0)
    exact = num_buckets // 2
    # log-spaced buckets for distance in [exact, max_distance); clamp(1) keeps log finite where unused
    scaled = torch.log(distance.clamp(min=1).float() / exact) / math.log(max_distance / exact)
    far = (exact + (scaled * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return bucket + torch.where(distance < exact, distance, far)


class RelativePositionBias(nn.Module):
    """Learned scalar per (bucket, head), returned as an additive bias (1, H, Tq, Tk)."""

    def __init__(self, config: ModelConfig, *, bidirectional: bool):
        super().__init__()
        self.bidirectional = bidirectional
        self.num_buckets = config.relative_attention_num_buckets
        self.max_distance = config.relative_attention_max_distance
        self.embed = nn.Embedding(self.num_buckets, config.num_heads)

    def forward(self, q_len: int, k_len: int, q_offset: int = 0) -> torch.Tensor:
        device = self.embed.weight.device
        q_pos = torch.arange(q_offset, q_offset + q_len, device=device)[:, None]
        k_pos = torch.arange(k_len, device=device)[None, :]
        buckets = relative_position_bucket(
            k_pos - q_pos,
            bidirectional=self.bidirectional,
            num_buckets=self.num_buckets,
            max_distance=self.max_distance,
        )
        return self.embed(buckets).permute(2, 0, 1).unsqueeze(0)  # (1, H, Tq, Tk)


class Stack(nn.Module):
    """One side (encoder or decoder) of T5 / BART; token embeddings are shared and passed in."""

    def __init__(self, config: ModelConfig, *, decoder: bool):
        super().__init__()
        self.config, self.is_decoder = config, decoder
        self.t5 = config.arch == "t5"
        n = config.decoder_layers if decoder else config.num_layers
        self.layers = nn.ModuleList(
            Layer(config, cross=decoder, pre_norm=self.t5, rms=self.t5, bias=not self.t5) for _ in range(n)
        )
        if self.t5:
            self.rel_bias = RelativePositionBias(config, bidirectional=not decoder)
            self.final_norm = make_norm(config.hidden_size, config.norm_eps, rms=True)
        else:
            rows = config.max_position_embeddings + BART_POSITION_OFFSET
            self.embed_positions = nn.Embedding(rows, config.hidden_size)
            self.embed_norm = make_norm(config.hidden_size, config.norm_eps)

    def forward(
        self,
        input_ids: torch.Tensor,
        embed_tokens: nn.Embedding,
        attention_mask: torch.Tensor | None = None,
        *,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        hidden_states: list[torch.Tensor] | None = None,
        attentions: list[torch.Tensor] | None = None,
        cross_attentions: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, KVCache | None]:
        """input_ids: (B, T) → (B, T, C) and the new cache. The lists, when given, receive the
        embeddings' and every layer's output (the last after T5's final norm) and the self- and
        cross-attention probabilities of every layer."""
        cfg = self.config
        past = cache.length if cache is not None else 0
        t = input_ids.shape[1]
        x = embed_tokens(input_ids)
        bias = None
        if self.t5:
            bias = self.rel_bias(t, past + t, past)
        else:
            if past + t > cfg.max_position_embeddings:
                raise ValueError(
                    f"bart: {past + t} positions exceed max_position_embeddings={cfg.max_position_embeddings}"
                )
            positions = torch.arange(past, past + t, device=x.device) + BART_POSITION_OFFSET
            scale = embed_scale(cfg)
            x = self.embed_norm((x * scale if scale != 1.0 else x) + self.embed_positions(positions))
        p = cfg.dropout if self.training else 0.0
        if p > 0.0:
            x = nn.functional.dropout(x, p, training=True)
        x, new_cache = run_layers(
            self.layers,
            x,
            checkpointing=cfg.gradient_checkpointing,
            cache=cache,
            use_cache=use_cache,
            causal=self.is_decoder,
            key_padding_mask=effective_mask(attention_mask),
            attn_bias=bias,
            memory=memory,
            memory_mask=effective_mask(memory_mask),
            hidden_states=hidden_states,
            attentions=attentions,
            cross_attentions=cross_attentions,
        )
        if self.t5:
            x = self.final_norm(x)
            if p > 0.0:
                x = nn.functional.dropout(x, p, training=True)
        if hidden_states is not None:
            hidden_states.append(x)
        return x, new_cache


def shift_right(labels: torch.Tensor, start_token_id: int, pad_token_id: int) -> torch.Tensor:
    """Decoder inputs from labels: [start, labels[:-1]] with IGNORE_INDEX replaced by pad."""
    out = labels.new_full(labels.shape, start_token_id)
    out[:, 1:] = labels[:, :-1]
    return out.masked_fill(out == IGNORE_INDEX, pad_token_id)


class EncoderDecoderForConditionalGeneration(nn.Module):
    """T5 / BART: shared embedding, encoder stack, decoder stack, LM head."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        if not config.is_encoder_decoder:
            raise ValueError(
                f"EncoderDecoderForConditionalGeneration: arch must be t5 or bart, got {config.arch!r}"
            )
        self.config = config
        pad = None if config.arch == "t5" else config.pad_token_id
        self.shared = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=pad)
        self.encoder = Stack(config, decoder=False)
        self.decoder = Stack(config, decoder=True)
        scale = config.hidden_size**-0.5 if config.scale_decoder_outputs else 1.0
        self.lm_head = LMHead(config, scale=scale)
        if config.arch == "bart":
            self.register_buffer("final_logits_bias", torch.zeros(1, config.vocab_size))
        init_weights(self, config.initializer_range)
        if config.arch == "t5":
            self._t5_init()

    @torch.no_grad()
    def _t5_init(self) -> None:
        """T5's fan-in init: no softmax scale and an output scaled by d_model**-0.5 assume it."""
        cfg = self.config
        d, inner = cfg.hidden_size, cfg.attn_dim
        nn.init.normal_(self.shared.weight, 0.0, 1.0)
        if self.lm_head.weight is not None:
            nn.init.normal_(self.lm_head.weight, 0.0, 1.0)
        for stack in (self.encoder, self.decoder):
            nn.init.normal_(stack.rel_bias.embed.weight, 0.0, d**-0.5)
            for layer in stack.layers:
                for attn in (layer.attn, layer.cross):
                    if attn is None:
                        continue
                    cross = attn.fuse == "kv"
                    proj = attn.q.weight if cross else attn.qkv.weight
                    nn.init.normal_(proj, 0.0, d**-0.5)  # keys and values
                    nn.init.normal_(proj[:inner], 0.0, (d * cfg.resolved_head_dim) ** -0.5)  # queries
                    if cross:
                        nn.init.normal_(attn.kv.weight, 0.0, d**-0.5)
                    nn.init.normal_(attn.out.weight, 0.0, inner**-0.5)
                nn.init.normal_(layer.mlp.fc_in.weight, 0.0, d**-0.5)
                nn.init.normal_(layer.mlp.fc_out.weight, 0.0, cfg.ffn_size**-0.5)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) → encoder memory (B, S, C)."""
        return self.encoder(input_ids, self.shared, attention_mask)[0]

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        decoder_input_ids: torch.Tensor | None = None,
        decoder_attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        *,
        encoder_hidden_states: torch.Tensor | None = None,
        cache: KVCache | None = None,
        use_cache: bool = False,
        return_logits: bool | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
    ) -> ModelOutput:
        """input_ids/attention_mask: (B, S) encoder side; decoder_input_ids: (B, T), derived from
        labels by shifting right when None; decoder_attention_mask: (B, past + T); labels: (B, T)
        aligned with the decoder outputs, IGNORE_INDEX (-100) skipped.

        Pass ``encoder_hidden_states`` (from ``encode``) to skip the encoder, e.g. when decoding
        step by step with ``cache``. ``output_hidden_states`` / ``output_attentions``: also return
        each stack's embeddings and layer outputs (``encoder_all_hidden_states``,
        ``all_hidden_states``: N + 1 tensors each) and the attention probabilities
        (``encoder_attentions``, ``attentions``, ``cross_attentions``), as transformers does.
        """
        cfg = self.config
        enc_states = [] if output_hidden_states and encoder_hidden_states is None else None
        enc_attn = [] if output_attentions and encoder_hidden_states is None else None
        if encoder_hidden_states is None:
            if input_ids is None:
                raise ValueError("EncoderDecoder: give input_ids or encoder_hidden_states")
            encoder_hidden_states = self.encoder(
                input_ids, self.shared, attention_mask, hidden_states=enc_states, attentions=enc_attn
            )[0]
        if decoder_input_ids is None:
            if labels is None:
                raise ValueError("EncoderDecoder: give decoder_input_ids or labels")
            decoder_input_ids = shift_right(labels, cfg.decoder_start_token_id, cfg.pad_token_id)
        states = [] if output_hidden_states else None
        attn, cross = ([], []) if output_attentions else (None, None)
        h, new_cache = self.decoder(
            decoder_input_ids,
            self.shared,
            decoder_attention_mask,
            memory=encoder_hidden_states,
            memory_mask=attention_mask,
            cache=cache,
            use_cache=use_cache,
            hidden_states=states,
            attentions=attn,
            cross_attentions=cross,
        )
        bias = self.final_logits_bias.view(-1) if cfg.arch == "bart" else None
        weight = self.shared.weight
        loss = self.lm_head.loss(h, weight, labels, bias) if labels is not None else None
        if return_logits is None:
            return_logits = labels is None
        logits = self.lm_head.logits(h, weight, bias) if return_logits else None
        return ModelOutput(
            loss=loss,
            logits=logits,
            hidden_states=h,
            encoder_hidden_states=encoder_hidden_states,
            cache=new_cache,
            all_hidden_states=_tuple(states),
            attentions=_tuple(attn),
            cross_attentions=_tuple(cross),
            encoder_all_hidden_states=_tuple(enc_states),
            encoder_attentions=_tuple(enc_attn),
        )


def _tuple(items: list | None) -> tuple | None:
    return None if items is None else tuple(items)
