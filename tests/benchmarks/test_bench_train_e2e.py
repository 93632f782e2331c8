"""End-to-end training benchmark: the FLOPs formula, the step-0 loss check, rows of a quick run."""

import pytest
import torch
from installed import import_or_skip

import_or_skip("transformers")
import_or_skip("peft")

from ptft_fast.benchmarks import bench_train_e2e as e2e  # noqa: E402  (needs transformers, peft)
from ptft_fast.benchmarks.harness import Unavailable  # noqa: E402
from ptft_fast.benchmarks.train_common import LossMismatchError  # noqa: E402

CPU = torch.device("cpu")


def test_step_flops_hand_computed():
    dense = [e2e.Dense(10, 4), e2e.Dense(3, 2, trainable=False)]
    attn = [e2e.Attn(layers=2, batch=1, q_len=4, k_len=5, width=8)]
    # 6·10·4 + 4·3·2 + 3 (fwd+bwd) · 2 layers · 4 (QKᵀ and PV, 2 FLOPs each) · 1·4·5·8
    assert e2e.step_flops(dense, attn) == 240 + 24 + 3 * 2 * 4 * 4 * 5 * 8


def test_bert_flops_are_six_n_t_plus_head_and_attention():
    built = e2e.build(e2e.QUICK[0], CPU)  # bert-tiny-cpu: L=2, H=64, F=128, V=1024; B=2, T=128
    try:
        h, f, v, layers, tokens = 64, 128, 1024, 2, 2 * 128
        per_layer = 4 * h * h + 4 * h + 2 * h * f + f + h + 4 * h  # qkv+out, FFN, two LayerNorms
        labeled = int((built.batch["labels"] != -100).sum())
        head = h * h + h + 2 * h + h * v  # transform dense + LayerNorm, tied decoder
        expected = 6 * layers * per_layer * tokens + 6 * head * labeled + 3 * layers * 4 * 2 * 128 * 128 * h
        assert built.case.flops == expected
    finally:
        built.ckpt.cleanup()


@pytest.mark.parametrize("index", [0, 4], ids=["bert_mlm", "gpt2_lora"])
def test_step0_loss_check_rejects_a_perturbed_weight(index):
    built = e2e.build(e2e.QUICK[index], CPU)
    try:
        e2e.checked_step(
            "ptft:torch", e2e._load_ptft(built, CPU), built, backend="torch"
        )  # same weights: fine
        model = e2e._load_ptft(built, CPU)
        name = "layers.1.attn.qkv.lora_B" if built.lora else "encoder.layers.1.mlp.fc_out.weight"
        with torch.no_grad():  # noise, not a constant: post-norm BERT's LayerNorm removes a constant shift
            weight = model.get_parameter(name)
            weight.add_(torch.randn(weight.shape, generator=torch.Generator().manual_seed(3)) * 0.5)
        with pytest.raises(LossMismatchError, match=r"step-0 loss of ptft:torch"):
            e2e.checked_step("ptft:torch", model, built, backend="torch")
        full = e2e.providers(built, CPU)
        for name in ("hf-liger", "ptft:triton", "ptft:cuda"):  # CUDA-only providers are skipped rows
            with pytest.raises(Unavailable):
                full[name]()
    finally:
        built.ckpt.cleanup()


def test_llama_flops_count_the_untied_head_and_gqa_attention_width():
    built = e2e.build(e2e.QUICK[5], CPU)  # llama-tiny: L=2, H=64, F=128, V=1024, 4 heads / 2 kv; B=1, T=256
    try:
        h, f, v, kv, layers, t = 64, 128, 1024, 32, 2, 256
        per_layer = 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h  # q, o; k, v (2 of 4 heads); SwiGLU; 2 norms
        body = layers * per_layer + h  # + final norm
        expected = 6 * body * t + 6 * h * v * (t - 1) + 3 * layers * 4 * t * t * h
        assert built.family == "llama" and built.case.flops == expected
        assert set(e2e.providers(built, CPU)) == {
            "hf-eager",
            "hf-compile",
            "hf+ptft-patch",
            "hf-liger",
        }
    finally:
        built.ckpt.cleanup()


def test_quick_suite_rows_are_filled():
    rows = e2e.suite(CPU, True)
    assert {r["op"] for r in rows} == {"bert_mlm", "gpt2_clm", "t5_span", "gpt2_lora", "llama_clm"}
    assert {r["provider"] for r in rows} == {"hf-eager", "ptft:torch", "hf+ptft-patch"}
    assert len(rows) == 3 * len(e2e.QUICK) - 1  # llama_clm: no ptft:torch
    for r in rows:
        assert r["tokens_per_s"] > 0 and r["tflops"] > 0, r
        assert r["peak_mem_mb"] is not None and r["ratio_vs_baseline"] > 0, r
        assert r["pct_peak"] is None  # no CPU peak in the table: MFU stays blank
        assert "threads=1" in r["shape"] and r["baseline"] == "hf-eager"
    assert all(r["ratio_vs_baseline"] == 1.0 for r in rows if r["provider"] == "hf-eager")


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--providers", "ptft:trition"], "--providers: unknown ['ptft:trition']"),
        (["--only", "bert_mlm@999"], "--only: unknown op(s) ['bert_mlm@999']"),
    ],
)
def test_bad_selection_flags_name_the_value(argv, needle, capsys):
    with pytest.raises(SystemExit):
        e2e.main(["--quick", *argv])
    assert needle in capsys.readouterr().err


def test_selected_matches_op_or_op_at_seq():
    w = e2e.FULL[1]  # bert_mlm @ 512
    assert e2e.selected(w, []) and e2e.selected(w, ["bert_mlm"]) and e2e.selected(w, ["bert_mlm@512"])
    assert not e2e.selected(w, ["bert_mlm@128"]) and not e2e.selected(w, ["gpt2_clm"])


def test_providers_run_in_the_order_given_after_the_baseline():
    factories = dict.fromkeys(e2e.PROVIDER_NAMES)
    given = ["hf-liger", "ptft:triton", "hf-compile"]  # hf-liger patches process-wide: always last
    assert list(e2e.ordered(factories, given)) == ["hf-eager", "ptft:triton", "hf-compile", "hf-liger"]
    assert list(e2e.ordered(factories, ["ptft:cuda"])) == ["hf-eager", "ptft:cuda"]
    everything = list(e2e.ordered(factories, []))
    assert everything[0] == "hf-eager" and everything[-1] == "hf-liger"
    assert sorted(everything) == sorted(e2e.PROVIDER_NAMES)
