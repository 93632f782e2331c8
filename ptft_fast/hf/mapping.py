"""Parameter-name tables between ptft_fast models and Hugging Face checkpoints, one per family.

A ``Rule`` maps one of our tensors to one or more HF tensors: several HF tensors are
concatenated along dim 0 (our fused q/k/v, k/v and gated-MLP projections); ``transpose`` is for
GPT-2's Conv1D, which stores (in, out). ``{i}`` / ``{j}`` stand for encoder (or only) / decoder
layer indices. ``IGNORED`` patterns are HF keys that carry no information of their own (tied
copies of the embedding, constant buffers) and are skipped when loading.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ptft_fast.models.config import ModelConfig


@dataclass(frozen=True)
class Rule:
    ours: str
    hf: tuple[str, ...]
    transpose: bool = False


def _linear(ours: str, hf: str | list[str], *, bias: bool = True, transpose: bool = False) -> list[Rule]:
    parts = [hf] if isinstance(hf, str) else hf
    rules = [Rule(f"{ours}.weight", tuple(f"{p}.weight" for p in parts), transpose)]
    if bias:
        rules.append(Rule(f"{ours}.bias", tuple(f"{p}.bias" for p in parts)))
    return rules


def _norm(ours: str, hf: str, *, bias: bool = True) -> list[Rule]:
    return _linear(ours, hf, bias=bias)


def _one(ours: str, hf: str) -> list[Rule]:
    return [Rule(ours, (hf,))]


def bert_table(config: ModelConfig) -> list[Rule]:
    """BertForMaskedLM / BertForPreTraining / RobertaForMaskedLM."""
    p = "bert" if config.arch == "bert" else "roberta"
    e, layer = f"{p}.embeddings", f"{p}.encoder.layer.{{i}}"
    ours = "encoder.layers.{i}"
    rules = [
        *_one("encoder.embed_tokens.weight", f"{e}.word_embeddings.weight"),
        *_one("encoder.embed_positions.weight", f"{e}.position_embeddings.weight"),
        *_norm("encoder.embed_norm", f"{e}.LayerNorm"),
        *_linear(f"{ours}.attn.qkv", [f"{layer}.attention.self.{n}" for n in ("query", "key", "value")]),
        *_linear(f"{ours}.attn.out", f"{layer}.attention.output.dense"),
        *_norm(f"{ours}.attn_norm", f"{layer}.attention.output.LayerNorm"),
        *_linear(f"{ours}.mlp.fc_in", f"{layer}.intermediate.dense"),
        *_linear(f"{ours}.mlp.fc_out", f"{layer}.output.dense"),
        *_norm(f"{ours}.mlp_norm", f"{layer}.output.LayerNorm"),
    ]
    if config.type_vocab_size > 0:
        rules += _one("encoder.embed_types.weight", f"{e}.token_type_embeddings.weight")
    if config.arch == "bert":
        rules += [
            *_linear("mlm.dense", "cls.predictions.transform.dense"),
            *_norm("mlm.norm", "cls.predictions.transform.LayerNorm"),
            *_one("mlm.bias", "cls.predictions.bias"),
        ]
    else:
        rules += [*_linear("mlm.dense", "lm_head.dense"), *_norm("mlm.norm", "lm_head.layer_norm")]
        rules += _one("mlm.bias", "lm_head.bias")
    if config.nsp_head:
        rules += [
            *_linear("nsp.pooler", "bert.pooler.dense"),
            *_linear("nsp.classifier", "cls.seq_relationship"),
        ]
    return rules


def gpt2_table(config: ModelConfig) -> list[Rule]:
    """GPT2LMHeadModel (Conv1D weights are stored transposed; lm_head.weight when untied)."""
    t, ours = "transformer.h.{i}", "layers.{i}"
    rules = [
        *_one("embed_tokens.weight", "transformer.wte.weight"),
        *_one("embed_positions.weight", "transformer.wpe.weight"),
        *_norm(f"{ours}.attn_norm", f"{t}.ln_1"),
        *_linear(f"{ours}.attn.qkv", f"{t}.attn.c_attn", transpose=True),
        *_linear(f"{ours}.attn.out", f"{t}.attn.c_proj", transpose=True),
        *_norm(f"{ours}.mlp_norm", f"{t}.ln_2"),
        *_linear(f"{ours}.mlp.fc_in", f"{t}.mlp.c_fc", transpose=True),
        *_linear(f"{ours}.mlp.fc_out", f"{t}.mlp.c_proj", transpose=True),
        *_norm("final_norm", "transformer.ln_f"),
    ]
    if not config.tie_word_embeddings:
        rules += _one("lm_head.weight", "lm_head.weight")
    return rules


def t5_table(config: ModelConfig) -> list[Rule]:
    """T5ForConditionalGeneration, v1.0 (wi) and v1.1 (wi_0 gate, wi_1 linear; own lm_head)."""
    rules = _one("shared.weight", "shared.weight")
    for side, idx in (("encoder", "{i}"), ("decoder", "{j}")):
        blk, ours = f"{side}.block.{idx}.layer", f"{side}.layers.{idx}"
        sa = f"{blk}.0.SelfAttention"
        rules += _one(
            f"{side}.rel_bias.embed.weight",
            f"{side}.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
        )
        rules += _linear(f"{ours}.attn.qkv", [f"{sa}.q", f"{sa}.k", f"{sa}.v"], bias=False)
        rules += _linear(f"{ours}.attn.out", f"{sa}.o", bias=False)
        rules += _norm(f"{ours}.attn_norm", f"{blk}.0.layer_norm", bias=False)
        ff = 1
        if side == "decoder":
            ca = f"{blk}.1.EncDecAttention"
            rules += _linear(f"{ours}.cross.q", f"{ca}.q", bias=False)
            rules += _linear(f"{ours}.cross.kv", [f"{ca}.k", f"{ca}.v"], bias=False)
            rules += _linear(f"{ours}.cross.out", f"{ca}.o", bias=False)
            rules += _norm(f"{ours}.cross_norm", f"{blk}.1.layer_norm", bias=False)
            ff = 2
        dense = f"{blk}.{ff}.DenseReluDense"
        wi = [f"{dense}.wi_0", f"{dense}.wi_1"] if config.gated_ffn else f"{dense}.wi"
        rules += _linear(f"{ours}.mlp.fc_in", wi, bias=False)
        rules += _linear(f"{ours}.mlp.fc_out", f"{dense}.wo", bias=False)
        rules += _norm(f"{ours}.mlp_norm", f"{blk}.{ff}.layer_norm", bias=False)
        rules += _norm(f"{side}.final_norm", f"{side}.final_layer_norm", bias=False)
    if not config.tie_word_embeddings:
        rules += _one("lm_head.weight", "lm_head.weight")
    return rules


def bart_table(config: ModelConfig) -> list[Rule]:
    """BartForConditionalGeneration (lm_head.weight when untied)."""
    rules = [*_one("shared.weight", "model.shared.weight"), *_one("final_logits_bias", "final_logits_bias")]
    if not config.tie_word_embeddings:
        rules += _one("lm_head.weight", "lm_head.weight")
    for side, idx in (("encoder", "{i}"), ("decoder", "{j}")):
        m, layer, ours = f"model.{side}", f"model.{side}.layers.{idx}", f"{side}.layers.{idx}"
        rules += _one(f"{side}.embed_positions.weight", f"{m}.embed_positions.weight")
        rules += _norm(f"{side}.embed_norm", f"{m}.layernorm_embedding")
        sa = f"{layer}.self_attn"
        rules += _linear(f"{ours}.attn.qkv", [f"{sa}.q_proj", f"{sa}.k_proj", f"{sa}.v_proj"])
        rules += _linear(f"{ours}.attn.out", f"{sa}.out_proj")
        rules += _norm(f"{ours}.attn_norm", f"{layer}.self_attn_layer_norm")
        if side == "decoder":
            ca = f"{layer}.encoder_attn"
            rules += _linear(f"{ours}.cross.q", f"{ca}.q_proj")
            rules += _linear(f"{ours}.cross.kv", [f"{ca}.k_proj", f"{ca}.v_proj"])
            rules += _linear(f"{ours}.cross.out", f"{ca}.out_proj")
            rules += _norm(f"{ours}.cross_norm", f"{layer}.encoder_attn_layer_norm")
        rules += _linear(f"{ours}.mlp.fc_in", f"{layer}.fc1")
        rules += _linear(f"{ours}.mlp.fc_out", f"{layer}.fc2")
        rules += _norm(f"{ours}.mlp_norm", f"{layer}.final_layer_norm")
    return rules


TABLES = {"bert": bert_table, "roberta": bert_table, "gpt2": gpt2_table, "t5": t5_table, "bart": bart_table}

# HF keys that are tied copies or constant buffers: skipped on load, never written.
IGNORED = {
    "bert": [r"\.embeddings\.(position_ids|token_type_ids)$", r"^cls\.predictions\.decoder\.(weight|bias)$"],
    "roberta": [r"\.embeddings\.(position_ids|token_type_ids)$", r"^lm_head\.decoder\.(weight|bias)$"],
    "gpt2": [r"\.attn\.(bias|masked_bias)$", r"^lm_head\.weight$"],
    "t5": [r"^(encoder|decoder)\.embed_tokens\.weight$", r"^lm_head\.weight$"],
    "bart": [r"^model\.(encoder|decoder)\.embed_tokens\.weight$", r"^lm_head\.weight$"],
}


# HF keys transformers fills itself when a checkpoint lacks them (with a warning): key → the other
# names the same tensor is stored under; when none is there either, zeros (transformers' init).
OPTIONAL = {
    "bert": {"cls.predictions.bias": ("cls.predictions.decoder.bias",)},
    "roberta": {"lm_head.bias": ("lm_head.decoder.bias",)},
    "bart": {"final_logits_bias": ()},
}


def expand(config: ModelConfig) -> list[Rule]:
    """The family's rules with layer placeholders filled in (duplicates removed, order kept)."""
    out: dict[str, Rule] = {}
    for rule in TABLES[config.arch](config):
        if "{i}" in rule.ours:
            idx, n = "{i}", config.num_layers
        elif "{j}" in rule.ours:
            idx, n = "{j}", config.decoder_layers
        else:
            out.setdefault(rule.ours, rule)
            continue
        for k in range(n):
            r = Rule(
                rule.ours.replace(idx, str(k)), tuple(h.replace(idx, str(k)) for h in rule.hf), rule.transpose
            )
            out[r.ours] = r
    return list(out.values())


def is_ignored(arch: str, key: str, used: set[str]) -> bool:
    """An HF key we may skip: tied copies and buffers (unless a rule consumed it, e.g. an untied head)."""
    return key not in used and any(re.search(p, key) for p in IGNORED[arch])
