"""Prompt tuning: P trainable soft-prompt embeddings prepended to the input embeddings.

Works for ptft_fast models and Hugging Face models alike without an ``inputs_embeds`` argument:
the wrapper prepends P placeholder ids (and ones to the attention mask), and a one-shot forward
hook on the token embedding replaces the placeholders' rows with the soft prompt. Position
embeddings are then added by the model as usual (prompt at positions 0..P-1, as in peft).
For encoder-decoder models the prompt goes to the encoder input only.

Generation (ptft_fast models): the wrapper forwards ``config`` and ``encode``. A decoder call that
continues a KV cache finds the prompt already cached: only its P mask columns are added, so the
soft prompt is applied once. Encoder memory from ``encode`` holds the P prompt positions; a
forward given it extends the (B, S) attention_mask accordingly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import nn

from ptft_fast.models.heads import IGNORE_INDEX


@dataclass
class PromptTuningConfig:
    num_virtual_tokens: int = 20
    init_text: str | None = None  # initialise from the embeddings of this text's tokens

    def to_dict(self) -> dict:
        return {"peft_type": "prompt", **asdict(self)}


def input_embedding(model: nn.Module) -> nn.Embedding:
    """The token embedding of an HF model (get_input_embeddings) or a ptft_fast model."""
    if hasattr(model, "get_input_embeddings"):
        return model.get_input_embeddings()
    for path in ("embed_tokens", "encoder.embed_tokens", "shared", "backbone.embed_tokens"):
        try:
            m = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(m, nn.Embedding):
            return m
    raise TypeError(f"prompt tuning: cannot find the token embedding of {type(model).__name__}")


def is_encoder_decoder(model: nn.Module) -> bool:
    return bool(getattr(getattr(model, "config", None), "is_encoder_decoder", False))


class PromptTuning(nn.Module):
    """Wraps ``model``: forward(input_ids (B, T), attention_mask (B, T), ...) runs the model on
    (B, P + T). ``soft_prompt``: (P, C).

    Args:
        init_ids: token ids whose embeddings initialise the prompt (repeated/truncated to P);
            None → P rows sampled from the vocabulary embedding.
        placeholder_id: id fed at the prompt positions (its embedding is replaced).
        strip_outputs: drop the P prompt positions from ``hidden_states``/``logits`` (and every
            layer's ``all_hidden_states``) of the output (for ptft_fast task heads that pool by position).
    """

    def __init__(
        self,
        model: nn.Module,
        num_virtual_tokens: int,
        init_ids: Sequence[int] | None = None,
        *,
        placeholder_id: int = 0,
        strip_outputs: bool = False,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if num_virtual_tokens < 1:
            raise ValueError(f"PromptTuning: num_virtual_tokens must be >= 1, got {num_virtual_tokens}")
        self.model = model
        self.num_virtual_tokens = num_virtual_tokens
        self.placeholder_id, self.strip_outputs = placeholder_id, strip_outputs
        emb = input_embedding(model)
        if init_ids is not None and len(init_ids) > 0:
            reps = -(-num_virtual_tokens // len(init_ids))
            ids = torch.tensor(list(init_ids) * reps, device=emb.weight.device)[:num_virtual_tokens]
        else:
            ids = torch.randint(0, emb.num_embeddings, (num_virtual_tokens,), generator=generator)
        self.soft_prompt = nn.Parameter(emb.weight.detach()[ids.to(emb.weight.device)].clone())
        self._pending = False
        emb.register_forward_hook(self._inject)

    def _inject(self, module, args, out: torch.Tensor) -> torch.Tensor | None:
        if not self._pending:
            return None
        self._pending = False  # encoder-decoder: the decoder's embedding call is left alone
        p = self.num_virtual_tokens
        prompt = self.soft_prompt.to(out.dtype).unsqueeze(0).expand(out.shape[0], -1, -1)
        return torch.cat([prompt, out[:, p:]], dim=1)

    @property
    def config(self):
        """The wrapped model's config (generation reads it)."""
        return self.model.config

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """ptft_fast encoder-decoder: input_ids (B, S), attention_mask (B, S) → encoder memory
        (B, P + S, C), the soft prompt first."""
        ids, attention_mask = self._prepend(input_ids, attention_mask)
        return self._with_prompt(self.model.encode, ids, attention_mask)

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        """input_ids: (B, T) and attention_mask (B, T) of the real tokens; input_ids may be None for
        an encoder-decoder given ``encoder_hidden_states`` from ``encode`` (then only the mask is
        extended). A decoder call that continues ``cache`` gets no second prompt."""
        if kwargs.get("prefix_mask") is not None:  # prefix LM: the soft prompt is part of the prefix
            kwargs["prefix_mask"] = self._extend_mask(kwargs["prefix_mask"])
        if input_ids is None or self._continues_cache(kwargs.get("cache")):
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return self.model(
                input_ids, attention_mask=self._extend_mask(attention_mask), labels=labels, **kwargs
            )
        b, p = input_ids.shape[0], self.num_virtual_tokens
        ids, attention_mask = self._prepend(input_ids, attention_mask)
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.cat([token_type_ids.new_zeros(b, p), token_type_ids], dim=1)
        if labels is not None:
            if labels.shape == input_ids.shape and not is_encoder_decoder(self.model):
                labels = torch.cat([labels.new_full((b, p), IGNORE_INDEX), labels], dim=1)
            kwargs["labels"] = labels
        out = self._with_prompt(self.model, ids, attention_mask=attention_mask, **kwargs)
        if self.strip_outputs:
            for name in ("hidden_states", "logits"):
                t = getattr(out, name, None)
                if isinstance(t, torch.Tensor) and t.dim() == 3 and t.shape[1] == ids.shape[1]:
                    setattr(out, name, t[:, p:])
            if getattr(out, "all_hidden_states", None) is not None:
                out.all_hidden_states = tuple(h[:, p:] for h in out.all_hidden_states)
        return out

    def _continues_cache(self, cache) -> bool:
        """A decoder step after the prompt: the soft prompt is already in the cache."""
        return cache is not None and cache.length > 0 and not is_encoder_decoder(self.model)

    def _extend_mask(self, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """(B, T) → (B, P + T): ones for the prompt positions."""
        if attention_mask is None:
            return None
        ones = attention_mask.new_ones(attention_mask.shape[0], self.num_virtual_tokens)
        return torch.cat([ones, attention_mask], 1)

    def _prepend(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None):
        """(B, T) ids and mask → (B, P + T), placeholders (replaced by the hook) first."""
        placeholders = input_ids.new_full((input_ids.shape[0], self.num_virtual_tokens), self.placeholder_id)
        return torch.cat([placeholders, input_ids], 1), self._extend_mask(attention_mask)

    def _with_prompt(self, fn, *args, **kwargs):
        """Run ``fn`` with the next token-embedding call replaced at the P prompt rows."""
        self._pending = True
        try:
            return fn(*args, **kwargs)
        finally:
            self._pending = False
