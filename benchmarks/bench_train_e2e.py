"""End-to-end training step: ptft_fast vs the tools people use (issue 10, item 2).

One optimizer step (zero_grad, forward, backward, AdamW step) at fixed shapes:

=============  ===========================================  =======  ==========  ===========
op             model, objective                             seq      batch CPU   batch CUDA
=============  ===========================================  =======  ==========  ===========
bert_mlm       BERT-base MLM, 15 % of tokens masked         128      2           32
bert_mlm       BERT-base MLM, 15 % of tokens masked         512      1           8
gpt2_clm       GPT-2 124M causal LM                         1024     1           8
t5_span        T5-small span corruption (512 → 114)         512      2           32
gpt2_lora      GPT-2 124M, LoRA r=8 on c_attn/c_proj (attn) 1024     1           8
llama_clm      Llama-style 125M (GQA 12/4 heads) causal LM  1024     1           8
=============  ===========================================  =======  ==========  ===========

(CPU batches are 1–2 so that a full run completes on a 2-core machine.) ``--quick`` runs tiny
configs of the same architectures (presets bert-tiny-cpu, gpt-tiny, t5-tiny, a tiny Llama) with
ptft:torch, hf+ptft-patch and hf-eager unless ``--providers`` names others. llama_clm has no
ptft_fast model of its own: it runs the transformers providers only. ``--tiny`` (the CPU rehearsal
of ``benchmarks/run_gpu.sh``) runs smaller still, and on CPU lets ptft:triton run under the Triton
interpreter (``TRITON_INTERPRET=1``).

Providers: ``ptft:<backend>`` for each ptft_fast backend (torch; triton and cuda on CUDA),
``hf-eager`` (transformers, attn_implementation="sdpa"; the baseline), ``hf-compile`` (the same
model under ``torch.compile``), ``hf-liger`` (Liger-Kernel on CUDA: its
``apply_liger_kernel_to_<family>`` if it has one, else :mod:`liger_patch`'s LayerNorm/RMSNorm and
fused linear cross-entropy), ``hf+ptft-patch`` (the same transformers model after
``ptft_fast.patch``: ptft_fast norms, attention, fused linear cross-entropy and, for LoRA, peft's
layers on ``ops.lora_linear``; its peak-memory column against hf-eager's is the saving of never
building the logits). A provider that cannot run here is a skipped row with the reason.
Same weights (every model is loaded from one saved transformers
checkpoint; ours through ``ptft_fast.hf``; LoRA weights copied across), same batch, same dtype
(fp32 on CPU, bf16 autocast on CUDA), dropout 0. Before any timing each provider's step-0 loss is
checked against hf-eager's within ``train_common.LOSS_TOL`` (fp32: 1e-4 + 1e-4·|loss|; bf16:
2e-2 + 1e-2·|loss|); a mismatch raises ``LossMismatchError``.

Columns: tokens/s (B·T, T5: B·(S + T_dec)), TFLOP/s from :func:`step_flops`, %peak = MFU vs the
harness's DEVICE_PEAKS (blank on CPU), peak memory (growth during one steady-state step), ratio
vs hf-eager measured in the same run.

Providers run in the order ``--providers`` gives, after the baseline; each row is appended to the
CSV the moment its provider is measured, and ``--provider-cap`` bounds each provider (a slower one
becomes a ``TIMEOUT`` row): a run stopped at a GPU lease's limit keeps every finished row.

Run: ``python -m ptft_fast.benchmarks.bench_train_e2e [--quick|--tiny] [--threads N] [--only OPS]
[--providers P,...] [--provider-cap S]`` → table, rows appended to
``benchmarks/results/train_e2e_<device>.csv``, tokens/s plot beside.
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from ptft_fast.benchmarks import liger_patch
from ptft_fast.benchmarks.harness import (
    RESULTS_DIR,
    Case,
    Unavailable,
    failure_summary,
    format_table,
    plot,
    provider_cap,
    run_case,
    single_thread_quick,
    streaming,
)
from ptft_fast.benchmarks.kernel_providers import optional, require_cuda
from ptft_fast.benchmarks.kernel_providers import ptft as kernel_ptft
from ptft_fast.benchmarks.train_common import (
    check_loss,
    clm_batch,
    mlm_batch,
    optimizer_step,
    ptft_from_hf,
    save_hf,
    transformers_module,
)
from ptft_fast.ops.dispatch import BACKENDS

KIND = "train"
BASELINE = "hf-eager"
PATCHED = "hf+ptft-patch"
LORA_R, LORA_ALPHA = 8, 16.0


@dataclass(frozen=True)
class Dense:
    """Weight matrices with ``params`` entries, each applied once to each of ``tokens`` tokens."""

    params: int
    tokens: int
    trainable: bool = True


@dataclass(frozen=True)
class Attn:
    """``layers`` attention layers over ``batch`` sequences: (q_len × k_len) scores of width
    ``width`` = heads × head_dim."""

    layers: int
    batch: int
    q_len: int
    k_len: int
    width: int


def step_flops(dense: Sequence[Dense], attention: Sequence[Attn]) -> float:
    """Model FLOPs of one training step (forward + backward), the MFU convention of PaLM (app. B).

    Dense: a multiply-add per weight per token forward (2·params·tokens); backward is twice that
    (grads of inputs and of weights), so 6·params·tokens, or 4·params·tokens for frozen weights
    (no weight grads: LoRA's base, a frozen tied head). Attention: QKᵀ and P·V, 2·2·B·Tq·Tk·width
    per layer forward, ×3 for forward + backward; the full score matrix is counted even when
    causal. Embedding lookups, norms' and softmax's elementwise work are not counted.
    """
    total = 0.0
    for d in dense:
        total += (6 if d.trainable else 4) * d.params * d.tokens
    for a in attention:
        total += 3 * a.layers * 4 * a.batch * a.q_len * a.k_len * a.width
    return float(total)


@dataclass
class Workload:
    op: str  # "bert_mlm" | "gpt2_clm" | "t5_span" | "gpt2_lora" | "llama_clm"
    preset: str  # ptft_fast preset (ModelConfig.from_name), dropout forced to 0; or a label with hf
    seq: int  # tokens per sequence (T5: encoder inputs)
    batch: dict[str, int]  # device type → sequences per step
    overrides: dict = field(default_factory=dict)  # further ModelConfig fields
    hf: dict | None = None  # transformers-only workload: AutoConfig.for_model fields (model_type first)

    @property
    def lora(self) -> bool:
        return self.op.endswith("lora")


# Llama-style decoders (RMSNorm, RoPE, SwiGLU, GQA, untied head): ~125M parameters, and tiny.
_LLAMA = dict(
    model_type="llama", max_position_embeddings=2048, tie_word_embeddings=False, attention_dropout=0.0
)
LLAMA_125M = dict(_LLAMA, vocab_size=32000, hidden_size=768, intermediate_size=2048, num_hidden_layers=12)
LLAMA_125M.update(num_attention_heads=12, num_key_value_heads=4)
LLAMA_TINY = dict(_LLAMA, vocab_size=1024, hidden_size=64, intermediate_size=128, num_hidden_layers=2)
LLAMA_TINY.update(num_attention_heads=4, num_key_value_heads=2)

FULL = [
    Workload("bert_mlm", "bert-base", 128, {"cpu": 2, "cuda": 32}),
    Workload("bert_mlm", "bert-base", 512, {"cpu": 1, "cuda": 8}),
    Workload("gpt2_clm", "gpt2", 1024, {"cpu": 1, "cuda": 8}),
    Workload("t5_span", "t5-small", 512, {"cpu": 2, "cuda": 32}),
    Workload("gpt2_lora", "gpt2", 1024, {"cpu": 1, "cuda": 8}),
    Workload("llama_clm", "llama-125m", 1024, {"cpu": 1, "cuda": 8}, hf=LLAMA_125M),
]
QUICK = [
    Workload("bert_mlm", "bert-tiny-cpu", 128, {"cpu": 2, "cuda": 2}),
    Workload("bert_mlm", "bert-tiny-cpu", 512, {"cpu": 1, "cuda": 1}, {"max_position_embeddings": 512}),
    Workload("gpt2_clm", "gpt-tiny", 256, {"cpu": 1, "cuda": 1}, {"max_position_embeddings": 256}),
    Workload("t5_span", "t5-tiny", 128, {"cpu": 2, "cuda": 2}),
    Workload("gpt2_lora", "gpt-tiny", 256, {"cpu": 1, "cuda": 1}, {"max_position_embeddings": 256}),
    Workload("llama_clm", "llama-tiny", 256, {"cpu": 1, "cuda": 1}, hf=LLAMA_TINY),
]
# the CPU rehearsal of run_gpu.sh: shapes at which the Triton interpreter takes about a second a step
TINY = [
    Workload("bert_mlm", "bert-tiny-cpu", 32, {"cpu": 2, "cuda": 2}),
    Workload("gpt2_clm", "gpt-tiny", 16, {"cpu": 1, "cuda": 1}),
]


@dataclass
class Built:
    """One workload, ready to hand to providers: checkpoint dir, batch, reference loss, case."""

    workload: Workload
    config: object  # ptft_fast ModelConfig (the transformers config for an hf-only workload)
    family: str  # transformers model_type: bert / gpt2 / t5 / llama
    hf_class: str  # transformers class: BertForMaskedLM / GPT2LMHeadModel / T5ForConditionalGeneration / ...
    ckpt: object  # TemporaryDirectory holding the transformers checkpoint
    batch: dict[str, torch.Tensor]
    lora: list[dict[str, tuple[torch.Tensor, torch.Tensor]]] | None  # per layer: qkv/out → (A, B)
    dtype: str  # "float32" | "bfloat16"
    ref_loss: float = 0.0
    case: Case | None = None

    @property
    def autocast(self) -> torch.dtype | None:
        return None if self.dtype == "float32" else getattr(torch, self.dtype)


def _t5_batch(cfg, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """T5 span corruption (ptft_fast.data.t5) of random raw ids: input_ids (B, seq), labels /
    decoder_input_ids (B, T_dec); the last 100 ids of the vocabulary are the sentinels."""
    from ptft_fast.data.t5 import T5Config, T5SpanCorruptionCollator

    sentinels = list(range(cfg.vocab_size - 1, cfg.vocab_size - 101, -1))
    collate = T5SpanCorruptionCollator(sentinels, cfg.eos_token_id, cfg.pad_token_id, T5Config(seq, seed=0))
    gen = torch.Generator().manual_seed(0)
    raw = torch.randint(2, cfg.vocab_size - 100, (batch, collate.raw_length), generator=gen)
    return collate(raw.tolist())


def _hf_model(cfg) -> nn.Module:
    """A randomly initialized transformers model for our config (SDPA attention)."""
    from ptft_fast.hf import to_hf_config

    t = transformers_module()
    hf = to_hf_config(cfg)
    model_type, arch = hf.pop("model_type"), hf.pop("architectures")[0]
    return getattr(t, arch)(t.AutoConfig.for_model(model_type, attn_implementation="sdpa", **hf))


def _hf_only_model(fields: dict) -> nn.Module:
    """A randomly initialized transformers causal LM from AutoConfig fields (SDPA attention)."""
    t = transformers_module()
    config = t.AutoConfig.for_model(**fields, attn_implementation="sdpa")
    return t.AutoModelForCausalLM.from_config(config)


def _lora_weights(cfg) -> list[dict[str, tuple[torch.Tensor, torch.Tensor]]]:
    """Random, non-zero LoRA (A (r, in), B (out, r)) per layer for the fused qkv and the output
    projection (B ≠ 0 so that a wrong copy changes the loss)."""
    gen = torch.Generator().manual_seed(1)
    h = cfg.hidden_size

    def pair(out: int):
        return torch.randn(LORA_R, h, generator=gen) / h**0.5, torch.randn(out, LORA_R, generator=gen) * 0.1

    return [{"qkv": pair(3 * h), "out": pair(h)} for _ in range(cfg.num_layers)]


def _hf_lora(model: nn.Module, weights) -> nn.Module:
    """transformers GPT-2 + peft LoRA on the attention's c_attn / c_proj, with ``weights``."""
    peft = optional("peft", "peft (pip install peft)")
    config = peft.LoraConfig(
        r=LORA_R,
        lora_alpha=LORA_ALPHA,
        lora_dropout=0.0,
        target_modules=r".*\.attn\.(c_attn|c_proj)",
        fan_in_fan_out=True,  # GPT-2's Conv1D stores (in, out)
    )
    model = peft.get_peft_model(model, config)
    with torch.no_grad():
        for block, w in zip(model.base_model.model.transformer.h, weights, strict=True):
            for name, key in (("c_attn", "qkv"), ("c_proj", "out")):
                layer = getattr(block.attn, name)
                layer.lora_A["default"].weight.copy_(w[key][0])
                layer.lora_B["default"].weight.copy_(w[key][1])
    return model


def _ptft_lora(model: nn.Module, weights) -> nn.Module:
    """Our GPT-2 + ptft_fast.peft LoRA on the fused qkv / attention output, with ``weights``."""
    from ptft_fast.peft import LoraConfig, get_peft_model

    model = get_peft_model(model, "lora", LoraConfig(LORA_R, LORA_ALPHA, 0.0, ["qkv", "out"]))
    with torch.no_grad():
        for layer, w in zip(model.layers, weights, strict=True):
            for key in ("qkv", "out"):
                getattr(layer.attn, key).lora_A.copy_(w[key][0])
                getattr(layer.attn, key).lora_B.copy_(w[key][1])
    return model


def _count(model: nn.Module, prefix: str, skip: Sequence[str] = ()) -> int:
    return sum(
        p.numel()
        for n, p in model.named_parameters()
        if n.startswith(prefix) and not any(s in n for s in skip)
    )


def _flops(built: Built, hf_model: nn.Module) -> float:
    """step_flops for the workload, parameters counted on the transformers model."""
    cfg, batch = built.config, built.batch
    b, s = batch["input_ids"].shape
    labels = batch["labels"]
    hv = cfg.hidden_size * cfg.vocab_size  # tied LM/MLM head matmul
    if built.family == "llama":  # untied, trainable head; attention width = heads × head_dim
        body = _count(hf_model, "model.layers.") + _count(hf_model, "model.norm.")
        width = cfg.num_attention_heads * (
            getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        )
        attn = [Attn(cfg.num_hidden_layers, b, s, s, width)]
        return step_flops([Dense(body, b * s), Dense(hv, b * (s - 1))], attn)
    if built.family == "bert":
        head = _count(hf_model, "cls.predictions.transform.") + hv
        dense = [Dense(_count(hf_model, "bert.encoder."), b * s), Dense(head, int((labels != -100).sum()))]
        return step_flops(dense, [Attn(cfg.num_layers, b, s, s, cfg.attn_dim)])
    if built.family == "gpt2":
        body, labeled = (
            _count(hf_model, "transformer.h.") + _count(hf_model, "transformer.ln_f."),
            b * (s - 1),
        )
        if built.lora is None:
            dense = [Dense(body, b * s), Dense(hv, labeled)]
        else:
            lora = sum(a.numel() + bb.numel() for w in built.lora for a, bb in w.values())
            dense = [Dense(body, b * s, False), Dense(lora, b * s), Dense(hv, labeled, False)]
        return step_flops(dense, [Attn(cfg.num_layers, b, s, s, cfg.attn_dim)])
    t = labels.shape[1]
    skip = ("embed_tokens", "relative_attention_bias")
    dense = [
        Dense(_count(hf_model, "encoder.", skip), b * s),
        Dense(_count(hf_model, "decoder.", skip), b * t),
        Dense(hv, int((labels != -100).sum())),
    ]
    attn = [
        Attn(cfg.num_layers, b, s, s, cfg.attn_dim),
        Attn(cfg.decoder_layers, b, t, t, cfg.attn_dim),
        Attn(cfg.decoder_layers, b, t, s, cfg.attn_dim),  # cross-attention
    ]
    return step_flops(dense, attn)


def build(w: Workload, device: torch.device) -> Built:
    """Random transformers model saved once, the batch, the hf-eager step-0 loss and the Case."""
    from ptft_fast.models.config import ModelConfig

    no_drop = dict(dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    b = w.batch[device.type]
    if w.hf is not None:
        torch.manual_seed(0)
        hf_model = _hf_only_model(w.hf)
        cfg = hf_model.config
        batch = clm_batch(cfg.vocab_size, b, w.seq)
    else:
        cfg = ModelConfig.from_name(w.preset, **no_drop, **w.overrides)
        if cfg.arch == "bert":
            batch = mlm_batch(cfg.vocab_size, b, w.seq)
        elif cfg.arch == "gpt2":
            batch = clm_batch(cfg.vocab_size, b, w.seq)
        else:
            batch = _t5_batch(cfg, b, w.seq)
        torch.manual_seed(0)
        hf_model = _hf_model(cfg)
    family = hf_model.config.model_type
    dtype = "bfloat16" if device.type == "cuda" else "float32"
    lora = _lora_weights(cfg) if w.lora else None
    built = Built(w, cfg, family, type(hf_model).__name__, save_hf(hf_model), batch, lora, dtype)
    flops = _flops(built, hf_model)
    if built.lora is not None:
        hf_model = _hf_lora(hf_model, built.lora)
    built.batch = batch = {k: v.to(device) for k, v in batch.items()}
    hf_model.to(device).train()
    with torch.no_grad(), contextlib.ExitStack() as ctx:
        if built.autocast is not None:
            ctx.enter_context(torch.autocast(device.type, dtype=built.autocast))
        built.ref_loss = hf_model(**batch).loss.item()
    b, s = batch["input_ids"].shape
    tokens = b * (s + batch["labels"].shape[1] if family == "t5" else s)
    shape = f"{w.preset} B={b} T={s}" + (f" T_dec={batch['labels'].shape[1]}" if family == "t5" else "")
    if device.type == "cpu":
        shape += f" threads={torch.get_num_threads()}"
    built.case = Case(w.op, shape, dtype, "step", flops=flops, tokens=tokens)
    return built


def checked_step(name: str, model: nn.Module, built: Built, *, backend=None, call=None, compiling=False):
    """The provider's optimizer step, after running step 0 and checking its loss vs hf-eager's
    (LossMismatchError otherwise). With ``compiling``, a failure of step 0 (torch.compile's
    inductor needs a C++ compiler on CPU, Triton on CUDA) makes the provider Unavailable."""
    step = optimizer_step(model, built.batch, autocast=built.autocast, backend=backend, call=call)
    try:
        loss = step().item()
    except Exception as exc:
        if not compiling:
            raise
        raise Unavailable(
            f"torch.compile failed: {type(exc).__name__}: {str(exc).splitlines()[0][:160]}"
        ) from None
    check_loss(name, loss, built.ref_loss, built.dtype, baseline=BASELINE)
    return step


def _load_hf(built: Built, device: torch.device, patch=None) -> nn.Module:
    """transformers model from the saved checkpoint (SDPA), ``patch(model)`` applied before LoRA."""
    t = transformers_module()
    model = getattr(t, built.hf_class).from_pretrained(built.ckpt.name, attn_implementation="sdpa")
    if patch is not None:
        patch(model)
    if built.lora is not None:
        model = _hf_lora(model, built.lora)
    return model.to(device)


def _load_ptft(built: Built, device: torch.device) -> nn.Module:
    model = ptft_from_hf(built.ckpt.name)
    if built.lora is not None:
        model = _ptft_lora(model, built.lora)
    return model.to(device)


def _liger_patch(built: Built, device: torch.device):
    """Liger-Kernel's ``apply_liger_kernel_to_<family>`` when this Liger has one (it patches
    transformers' modules process-wide, so hf-liger runs after the other transformers providers),
    else ``liger_patch.patch`` (Liger's norms and fused linear cross-entropy wired into this model
    instance; Liger 0.8.5 has no patch for BERT, GPT-2 or T5); Unavailable off CUDA or without Liger."""
    require_cuda(device, "Liger-Kernel")
    liger = optional("liger_kernel.transformers", "Liger-Kernel (pip install liger-kernel)")
    apply = getattr(liger, f"apply_liger_kernel_to_{built.family}", None)
    if apply is not None:
        return lambda model: apply(model=model)
    return liger_patch.patch


def _load_hf_patched(built: Built, device: torch.device) -> nn.Module:
    """transformers model (with peft LoRA for LoRA workloads), then ``ptft_fast.patch``."""
    import ptft_fast

    model = _load_hf(built, device)
    ptft_fast.patch(model)
    return model


def providers(built: Built, device: torch.device, *, interpret: bool = False) -> dict:
    """name → factory (model loaded, step 0 run and checked) for ``run_case``; ``interpret``: the
    triton backend also on CPU tensors when ``TRITON_INTERPRET=1`` (the rehearsal)."""

    def ptft_step(backend: str):
        return checked_step(f"ptft:{backend}", _load_ptft(built, device), built, backend=backend)

    def compiled():
        model = _load_hf(built, device)
        call = torch.compile(model, dynamic=False)
        return checked_step("hf-compile", model, built, call=call, compiling=True)

    ours = kernel_ptft(ptft_step, device, interpret=interpret)
    if built.workload.hf is not None:
        ours = {}  # no ptft_fast model of this architecture
    out = {BASELINE: lambda: checked_step(BASELINE, _load_hf(built, device), built)}
    patched = {PATCHED: lambda: checked_step(PATCHED, _load_hf_patched(built, device), built)}
    out["hf-compile"] = compiled
    out.update(patched)  # before hf-liger: Liger's own patches change transformers' classes process-wide
    out["hf-liger"] = lambda: checked_step(
        "hf-liger", _load_hf(built, device, _liger_patch(built, device)), built
    )
    return {**out, **{name.replace("ptft-", "ptft:"): make for name, make in ours.items()}}


# every provider name ``providers`` returns; --quick and --tiny time hf-eager and QUICK_PROVIDERS
# unless --providers names others
PROVIDER_NAMES = [BASELINE, "hf-compile", PATCHED, "hf-liger", *(f"ptft:{b}" for b in BACKENDS)]
QUICK_PROVIDERS = ["ptft:torch", PATCHED]


def ordered(factories: dict, keep: Sequence[str]) -> dict:
    """The baseline, then the providers named in ``keep`` in that order (all when empty); hf-liger
    last of all (names a workload lacks are left out), since an ``apply_liger_kernel_to_<family>`` patch is process-wide."""
    names = [BASELINE, *(k for k in keep if k != BASELINE)] if keep else list(factories)
    names = sorted(dict.fromkeys(names), key=lambda n: (n == "hf-liger", n != BASELINE))
    return {n: factories[n] for n in names if n in factories}  # llama_clm has no ptft:*


def selected(w: Workload, only: Sequence[str]) -> bool:
    """``only`` entries are op names (``bert_mlm``) or one shape of an op (``bert_mlm@512``)."""
    return not only or w.op in only or f"{w.op}@{w.seq}" in only


@single_thread_quick
def suite(
    device: torch.device,
    quick: bool,
    only: Sequence[str] = (),
    keep: Sequence[str] = (),
    *,
    tiny: bool = False,
) -> list[dict]:
    """Rows for every workload (``only``: see :func:`selected`; ``keep``: provider names to time in
    this order, all when empty — QUICK_PROVIDERS for ``quick``; the baseline always runs first),
    providers timed one after another, each row streamed as it is measured. ``tiny`` (with
    ``quick``): the TINY workloads, triton interpreted on CPU."""
    # step 0 (the loss check) already warms up: the rehearsal's tiny runs time 2 more steps
    warmup, repeats = (0, 2) if tiny else (1, 3) if quick or device.type == "cpu" else (3, 10)
    if quick and not keep:
        keep = QUICK_PROVIDERS
    rows = []
    for w in TINY if tiny else QUICK if quick else FULL:
        if not selected(w, only):
            continue
        built = build(w, device)
        try:
            factories = ordered(providers(built, device, interpret=tiny), keep)
            rows += run_case(
                built.case, factories, device,
                baseline=BASELINE, warmup=warmup, repeats=repeats,
            )  # fmt: skip
        finally:
            built.ckpt.cleanup()
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny configs, ptft:torch, hf+ptft-patch and hf-eager only"
    )
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="the rehearsal's shapes (smaller than --quick); triton interpreted on CPU",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument(
        "--only",
        default="",
        help="comma-separated ops (bert_mlm,gpt2_clm,t5_span,gpt2_lora,llama_clm) or op@seq (bert_mlm@512)",
    )
    parser.add_argument(
        "--providers",
        default="",
        help="comma-separated providers to time, in this order (hf-eager, the baseline, always runs first); "
        "default all",
    )
    parser.add_argument(
        "--provider-cap",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="at most this long per provider (model load, step 0, timing); over it the row says TIMEOUT",
    )
    parser.add_argument(
        "--csv", default=None, help="CSV to append to (default results/train_e2e_<device>.csv)"
    )
    parser.add_argument("--plot", default=None, help="tokens/s PNG (default results/train_e2e_<device>.png)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    stem = f"train_e2e_{device.type}" + ("-tiny" if args.tiny else "-quick" if args.quick else "")
    workloads = TINY if args.tiny else QUICK if args.quick else FULL
    known = list(dict.fromkeys([w.op for w in workloads] + [f"{w.op}@{w.seq}" for w in workloads]))
    ops = [s for s in args.only.split(",") if s] or list(dict.fromkeys(w.op for w in workloads))
    if set(ops) - set(known):
        parser.error(f"--only: unknown op(s) {sorted(set(ops) - set(known))}; known: {known}")
    keep = [s for s in args.providers.split(",") if s]
    if set(keep) - set(PROVIDER_NAMES):
        parser.error(
            f"--providers: unknown {sorted(set(keep) - set(PROVIDER_NAMES))}; known: {PROVIDER_NAMES}"
        )
    if args.provider_cap < 0:
        parser.error(f"--provider-cap must be >= 0 seconds, got {args.provider_cap}")
    csv_path = args.csv or RESULTS_DIR / f"{stem}.csv"
    rows = []
    with streaming(csv_path), provider_cap(args.provider_cap):
        for op in ops:
            rows += suite(device, args.quick or args.tiny, [op], keep, tiny=args.tiny)
    print(format_table(rows))
    print(f"rows appended to {csv_path}")
    title = f"one training step, tokens/s per provider ({'quick' if args.quick else 'full'})"
    print(f"plot written to {plot(rows, args.plot or RESULTS_DIR / f'{stem}.png', title, 'tokens_per_s')}")
    if summary := failure_summary(rows):
        raise SystemExit(summary)


if __name__ == "__main__":
    main()
