"""Tiny random transformers models of every family ``ptft_fast.patch`` is tested on, and batches.

No downloads: each builder makes a model from a small config, with every 1-D parameter (norm
weights and biases) and BART's ``final_logits_bias`` perturbed, so that no norm is an identity
and Gemma's (1 + w) offset matters. ``batch(family)`` gives a training batch with right padding.
"""

from __future__ import annotations

import torch
import transformers as t

VOCAB = 97
_DEC = dict(
    vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)
_DEC.update(max_position_embeddings=64, attention_dropout=0.0)


def _llama():
    return t.LlamaForCausalLM(t.LlamaConfig(**_DEC, num_key_value_heads=2, pad_token_id=0))


def _mistral():  # a window shorter than the batch's 11 tokens, so that it binds
    return t.MistralForCausalLM(
        t.MistralConfig(**_DEC, num_key_value_heads=2, sliding_window=4, pad_token_id=0)
    )


def _qwen2():  # multi-query attention (one key/value head), biased q/k/v
    return t.Qwen2ForCausalLM(t.Qwen2Config(**_DEC, num_key_value_heads=1, pad_token_id=0))


def _gemma():  # (1 + w) RMSNorm, tied head, head_dim set apart from hidden / heads
    return t.GemmaForCausalLM(t.GemmaConfig(**_DEC, num_key_value_heads=2, head_dim=16, pad_token_id=0))


def _phi3():  # fused qkv and gate/up projections
    cfg = t.Phi3Config(**_DEC, num_key_value_heads=2, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    return t.Phi3ForCausalLM(cfg)


_ENC = dict(
    vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64
)
_ENC.update(max_position_embeddings=40, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)


def _bert():
    return t.BertForMaskedLM(t.BertConfig(**_ENC))


def _bert_causal():
    return t.BertLMHeadModel(t.BertConfig(**_ENC, is_decoder=True))


def _roberta():
    return t.RobertaForMaskedLM(t.RobertaConfig(**_ENC, pad_token_id=1, type_vocab_size=1))


def _gpt2():
    cfg = t.GPT2Config(
        vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=64, bos_token_id=1, eos_token_id=2
    )
    cfg.update(dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0))
    return t.GPT2LMHeadModel(cfg)


def _t5():
    cfg = t.T5Config(
        vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
        relative_attention_num_buckets=8, dropout_rate=0.0, decoder_start_token_id=0, pad_token_id=0,
    )  # fmt: skip
    return t.T5ForConditionalGeneration(cfg)


def _bart():
    cfg = t.BartConfig(
        vocab_size=VOCAB, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
        decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=40,
        dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
    )  # fmt: skip
    return t.BartForConditionalGeneration(cfg)


BUILDERS = {
    "llama": _llama,
    "mistral": _mistral,
    "qwen2": _qwen2,
    "gemma": _gemma,
    "phi3": _phi3,
    "bert": _bert,
    "roberta": _roberta,
    "gpt2": _gpt2,
    "t5": _t5,
    "bart": _bart,
    "bert-causal": _bert_causal,
}
DECODERS = ("llama", "mistral", "qwen2", "gemma", "phi3", "gpt2", "bert-causal")
MASKED = ("bert", "roberta")
SEQ2SEQ = ("t5", "bart")


def build(family: str) -> torch.nn.Module:
    """A tiny random model of ``family`` (see BUILDERS), norms and biases perturbed."""
    model = BUILDERS[family]()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
        if hasattr(model, "final_logits_bias"):
            model.final_logits_bias.normal_(0.0, 0.5, generator=gen)
    return model


def batch(family: str, b: int = 3, s: int = 11) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask/labels; rows 1 and 2 right-padded; ids start at 3 (past the specials)."""
    gen = torch.Generator().manual_seed(2)
    ids = torch.randint(3, VOCAB, (b, s), generator=gen)
    mask = torch.ones(b, s, dtype=torch.long)
    mask[1, 7:] = 0
    mask[2, 4:] = 0
    if family in SEQ2SEQ:
        labels = torch.randint(3, VOCAB, (b, 6), generator=gen)
        labels[0, 4:] = -100
    elif family in MASKED:
        labels = torch.full_like(ids, -100)
        labels[:, ::3] = ids[:, ::3]
        labels = labels.masked_fill(mask == 0, -100)
    else:
        labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
