"""Liger-Kernel for transformers' BERT, GPT-2 and T5, which Liger does not patch itself.

Liger 0.8.5's ``apply_liger_kernel_to_<family>`` cover decoder LLMs (Llama, Mistral, Qwen, Gemma, ...),
not BERT, GPT-2 or T5. This builds the same kind of patch from Liger's public modules, as its Llama
patch does: the norms become Liger's, and the
training loss becomes its fused linear cross-entropy (FLCE), which takes the last hidden states and
the output projection and never builds the (N, V) logits.

- ``BertForMaskedLM``: every nn.LayerNorm → LigerLayerNorm; loss = FLCE of the prediction head's
  transform output vs the decoder's weight and bias.
- ``GPT2LMHeadModel``: ln_1, ln_2, ln_f → LigerLayerNorm; loss = FLCE of the final hidden states
  but the last vs lm_head's weight and the labels but the first.
- ``T5ForConditionalGeneration``: T5LayerNorm → LigerRMSNorm; loss = FLCE of the decoder output
  (scaled by d_model**-0.5 where transformers scales it) vs lm_head's weight.

``patch(model)`` does both, in place. Norms are new modules holding copies of the old weights (same
eps, device, dtype, requires_grad); apply LoRA or build the optimizer afterwards. The loss is a
per-instance ``forward``: with ``labels`` it returns the output class transformers returns, with
``loss`` set and ``logits=None`` (as Liger's patched forwards do); without labels it is transformers'
own forward. A peft model wrapping the patched model calls this forward, and through it the peft
layers injected into the base model.

Liger's norm kernels run on CUDA only (not under TRITON_INTERPRET=1); its FLCE also runs under the
interpreter, so the loss half is testable on CPU.
"""

from __future__ import annotations

from types import MethodType

import torch
from torch import nn

IGNORE_INDEX = -100  # label of tokens that carry no loss (BERT's unmasked, T5's padding)
MODEL_CLASSES = {"bert": "BertForMaskedLM", "gpt2": "GPT2LMHeadModel", "t5": "T5ForConditionalGeneration"}
# keyword arguments of T5's decoder stack that its encoder stack must not get
_DECODER_ONLY = ("cache", "past_key_values", "use_cache")


def patch(model: nn.Module, *, norms: bool = True, loss: bool = True) -> nn.Module:
    """Liger's norms (``norms``) and fused linear cross-entropy (``loss``) in ``model``, in place;
    returns ``model``. ``model`` is one of :data:`MODEL_CLASSES`."""
    if norms:
        swap_norms(model)
    if loss:
        use_fused_loss(model)
    return model


def family(model: nn.Module) -> str:
    """``model``'s key in :data:`MODEL_CLASSES`, or ValueError naming what is supported."""
    name = getattr(getattr(model, "config", None), "model_type", None)
    if MODEL_CLASSES.get(name) != type(model).__name__:
        raise ValueError(
            f"liger_patch: model must be one of {sorted(MODEL_CLASSES.values())}, got {type(model).__name__}"
        )
    return name


def swap_norms(model: nn.Module) -> int:
    """Replace ``model``'s norms by Liger's (BERT, GPT-2: nn.LayerNorm → LigerLayerNorm; T5:
    T5LayerNorm → LigerRMSNorm) holding copies of their weights. Returns how many were replaced."""
    if family(model) == "t5":
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        return _replace(model, lambda m: isinstance(m, T5LayerNorm), _liger_rms_norm)
    return _replace(model, lambda m: isinstance(m, nn.LayerNorm), _liger_layer_norm)


def use_fused_loss(model: nn.Module) -> None:
    """Make ``model``'s forward compute the loss with Liger's FLCE when labels are given."""
    forward = {"bert": _bert_forward, "gpt2": _gpt2_forward, "t5": _t5_forward}[family(model)]
    model.forward = MethodType(forward, model)


def _replace(model: nn.Module, matches, make) -> int:
    """Set every submodule for which ``matches(module)`` holds to ``make(module)``; count them."""
    found = [(name, m) for name, m in model.named_modules() if name and matches(m)]
    for name, old in found:
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, make(old))
    return len(found)


def _liger_layer_norm(old: nn.LayerNorm) -> nn.Module:
    """LigerLayerNorm with ``old``'s eps, weight (H,) and bias (H,)."""
    from liger_kernel.transformers import LigerLayerNorm

    if len(old.normalized_shape) != 1 or old.weight is None or old.bias is None:
        raise ValueError(f"liger_patch: LayerNorm must be over one dim with weight and bias, got {old}")
    return _copy_params(LigerLayerNorm(old.normalized_shape[0], eps=old.eps, bias=True), old)


def _liger_rms_norm(old: nn.Module) -> nn.Module:
    """LigerRMSNorm computing what T5LayerNorm ``old`` computes: w · x / sqrt(mean(x²) + eps), no
    offset added to w, the mean square in fp32, the normalized x cast back to x's dtype before the
    product with w ("llama" casting; T5 casts to w's dtype, the same when x and w share one)."""
    from liger_kernel.transformers import LigerRMSNorm

    # in_place=False: the kernel would otherwise write dx over the incoming grad, and autograd may
    # still hold that buffer (T5's encoder output feeds every cross-attention)
    new = LigerRMSNorm(
        old.weight.shape[0], eps=old.variance_epsilon, offset=0.0, casting_mode="llama", in_place=False
    )
    return _copy_params(new, old)


def _copy_params(new: nn.Module, old: nn.Module) -> nn.Module:
    """``new`` on ``old``'s device and dtype, in ``old``'s train/eval mode, with copies of ``old``'s
    params (same requires_grad)."""
    new.to(device=old.weight.device, dtype=old.weight.dtype).train(old.training)
    with torch.no_grad():
        for name, p in old.named_parameters(recurse=False):
            getattr(new, name).copy_(p).requires_grad_(p.requires_grad)
    return new


def fused_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    labels: torch.Tensor,
    bias: torch.Tensor | None = None,
    num_items: torch.Tensor | int | None = None,
) -> torch.Tensor:
    """Cross-entropy of ``hidden @ weight.T + bias`` vs ``labels`` without building the logits.

    hidden: (..., H); weight: (V, H); labels: (...) int64, IGNORE_INDEX where no loss; bias: (V,).
    The mean over labeled tokens, or the sum divided by ``num_items`` when given (transformers'
    ``num_items_in_batch`` under gradient accumulation). Returns a scalar.
    """
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    reduction = "mean" if num_items is None else "sum"
    flce = LigerFusedLinearCrossEntropyLoss(ignore_index=IGNORE_INDEX, reduction=reduction)
    loss = flce(weight, hidden.reshape(-1, hidden.shape[-1]), labels.reshape(-1).to(hidden.device), bias)
    return loss if num_items is None else loss / num_items


def _bert_forward(self, input_ids=None, attention_mask=None, *, labels=None, **kwargs):
    """BertForMaskedLM.forward; with labels (B, T) the loss is FLCE of the prediction head's
    transform (dense, activation, LayerNorm) output (B, T, H) against the decoder's weight (V, H)
    and bias (V,)."""
    if labels is None:
        return type(self).forward(self, input_ids, attention_mask, **kwargs)
    from transformers.modeling_outputs import MaskedLMOutput

    out = self.bert(input_ids, attention_mask=attention_mask, return_dict=True, **kwargs)
    head = self.cls.predictions
    hidden = head.transform(out.last_hidden_state)  # (B, T, H)
    loss = fused_loss(hidden, head.decoder.weight, labels, head.decoder.bias)
    return MaskedLMOutput(loss=loss, logits=None, hidden_states=out.hidden_states, attentions=out.attentions)


def _gpt2_forward(self, input_ids=None, *, labels=None, num_items_in_batch=None, **kwargs):
    """GPT2LMHeadModel.forward; with labels (B, T) the loss is FLCE of the final hidden states at
    positions 0..T-2 (B, T-1, H) against lm_head's weight (V, H) and labels 1..T-1 (transformers
    shifts the labels inside its loss the same way)."""
    if labels is None:
        return type(self).forward(self, input_ids, **kwargs)
    from transformers.modeling_outputs import CausalLMOutputWithCrossAttentions

    out = self.transformer(input_ids, **kwargs)
    hidden = out.last_hidden_state[:, :-1]  # (B, T-1, H): position t predicts token t+1
    loss = fused_loss(hidden, self.lm_head.weight, labels[:, 1:], num_items=num_items_in_batch)
    return CausalLMOutputWithCrossAttentions(
        loss=loss,
        logits=None,
        hidden_states=out.hidden_states,
        attentions=out.attentions,
        cross_attentions=out.cross_attentions,
    )


def _t5_forward(
    self,
    input_ids=None,
    attention_mask=None,
    decoder_input_ids=None,
    decoder_attention_mask=None,
    encoder_outputs=None,
    *,
    labels=None,
    inputs_embeds=None,
    decoder_inputs_embeds=None,
    **kwargs,
):
    """T5ForConditionalGeneration.forward; with labels (B, T_dec) the loss is FLCE of the decoder's
    output (B, T_dec, H) against lm_head's weight (V, H), the output first scaled by d_model⁻⁰ᐧ⁵
    where transformers scales it (``config.scale_decoder_outputs``; in transformers 4,
    ``tie_word_embeddings``). Without decoder inputs they are the labels shifted right."""
    if labels is None:
        return type(self).forward(
            self,
            input_ids,
            attention_mask,
            decoder_input_ids,
            decoder_attention_mask,
            encoder_outputs=encoder_outputs,
            inputs_embeds=inputs_embeds,
            decoder_inputs_embeds=decoder_inputs_embeds,
            **kwargs,
        )
    from transformers.modeling_outputs import Seq2SeqLMOutput

    if encoder_outputs is None:
        shared = {k: v for k, v in kwargs.items() if k not in _DECODER_ONLY}
        encoder_outputs = self.encoder(
            input_ids=input_ids, attention_mask=attention_mask, inputs_embeds=inputs_embeds, **shared
        )
    if decoder_input_ids is None and decoder_inputs_embeds is None:
        decoder_input_ids = self._shift_right(labels)
    out = self.decoder(
        input_ids=decoder_input_ids,
        attention_mask=decoder_attention_mask,
        inputs_embeds=decoder_inputs_embeds,
        encoder_hidden_states=encoder_outputs[0],
        encoder_attention_mask=attention_mask,
        **kwargs,
    )
    hidden = out[0]  # (B, T_dec, H)
    if getattr(self.config, "scale_decoder_outputs", self.config.tie_word_embeddings):
        hidden = hidden * self.config.d_model**-0.5
    loss = fused_loss(hidden, self.lm_head.weight, labels)
    return Seq2SeqLMOutput(
        loss=loss,
        logits=None,
        decoder_hidden_states=out.hidden_states,
        decoder_attentions=out.attentions,
        cross_attentions=out.cross_attentions,
        encoder_last_hidden_state=encoder_outputs[0],
    )
