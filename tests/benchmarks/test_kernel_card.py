"""The kernel report card: what it reads from compiler output, its gate, and its AOT compile path.

The card's full run (every kernel, every config, sm_90 and sm_80) is CI's gate step (.ci/run);
these tests check its parts, each on input where the right answer is known."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from ptft_fast.benchmarks.card_compile import _ptx_facts, blocks_per_sm, parse_ptxas_log
from ptft_fast.benchmarks.kernel_card import gate, markdown

PTXAS_LOG = """\
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z26linear_cross_entropy_fwd_kIfEvv' for 'sm_90a'
ptxas info    : Function properties for _Z26linear_cross_entropy_fwd_kIfEvv
    8 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 168 registers, used 1 barriers, 24576 bytes smem, 400 bytes cmem[0]
ptxas info    : Compiling entry function '_Z26linear_cross_entropy_fwd_kIfEvv' for 'sm_80'
ptxas info    : Function properties for _Z26linear_cross_entropy_fwd_kIfEvv
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 96 registers, used 1 barriers, 400 bytes cmem[0]
"""


def test_parse_ptxas_log():
    report = parse_ptxas_log(PTXAS_LOG)
    assert report == {
        "_Z26linear_cross_entropy_fwd_kIfEvv@sm_90a": {
            "registers": 168,
            "spill_bytes": 20,
            "smem_bytes": 24576,
        },
        "_Z26linear_cross_entropy_fwd_kIfEvv@sm_80": {"registers": 96, "spill_bytes": 0, "smem_bytes": 0},
    }


def test_ptx_facts():
    ptx = """
        wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 {%f1}, %rd1, %rd2, 1, 1, 1, 0, 1;
        @%p3 atom.global.gpu.relaxed.add.f32 %f9, [%rd4], %f8;
        red.global.add.f32 [%rd5], %f7;
        atom.shared.add.u32 %r1, [%r2], 1;
        cp.async.cg.shared.global [ %r3 + 0 ], [ %rd6 + 0 ], 0x10, %r4;
    """
    assert _ptx_facts(ptx) == ("wgmma", 2, "cp.async")
    assert _ptx_facts("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%f1};") == ("mma.sync", 0, "none")
    tma = "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%r1], [%rd1, {%r2, %r3}], [%r4];"
    assert _ptx_facts(tma) == ("none", 0, "tma")


def test_blocks_per_sm():
    # 255 registers x 256 threads: 65280 of 65536 -> one program; shared memory allows 3
    assert blocks_per_sm(90, 255, 8, 72 * 1024) == 1
    assert blocks_per_sm(90, 64, 4, 72 * 1024) == 3  # smem-bound: 233472 // (73728 + 1024)
    assert blocks_per_sm(80, 32, 1, 0) == 32  # the resident-block limit
    assert blocks_per_sm(90, 128, 8, 240 * 1024) == 0  # over the SM's shared memory


def _row(**kw):
    row = dict(
        source="triton", arch="sm_90", op="attention", case="c", dtype="bfloat16", kernel="k", config="cfg",
        explicit_options=True, pruned=False, registers=128, spill_bytes=0, smem_bytes=1024, smem_limit=232448,
        tensor_core="wgmma", global_atomics=0, async_copy="cp.async", error="",
    )  # fmt: skip
    return {**row, **kw}


@pytest.mark.parametrize(
    "bad, rule",
    [
        (dict(spill_bytes=4), "spills 4 B"),
        (dict(smem_bytes=232449), "shared memory 232449 B > 232448 B"),
        (dict(op="linear_cross_entropy", global_atomics=12), "12 global atomic instructions"),
        (dict(tensor_core="mma.sync"), "mma.sync, not wgmma"),
        (dict(explicit_options=False), "without explicit num_warps and num_stages"),
        (dict(error="CompilationError: x"), "does not compile"),
    ],
)
def test_gate_rules(bad, rule):
    assert gate([_row()]) == []
    failures = gate([_row(**bad)])
    assert len(failures) == 1 and rule in failures[0], failures


def test_gate_scope():
    # atomics are fine outside the cross-entropy; mma.sync is fine on sm_80 and for fp32 inputs;
    # configs the pruner drops never launch; csrc rows are reported, not gated
    assert gate([_row(global_atomics=3)]) == []
    assert gate([_row(arch="sm_80", tensor_core="mma.sync", smem_limit=166912)]) == []
    assert gate([_row(dtype="float32", tensor_core="mma.sync")]) == []
    assert gate([_row(pruned=True, spill_bytes=100, smem_bytes=10**6)]) == []
    assert (
        gate([{"source": "csrc", "arch": "sm_90a", "kernel": "x", "registers": 255, "spill_bytes": 8}]) == []
    )


def test_markdown_table():
    bounds = dict(lower_bound_us=12.5, peer="FlashAttention-2", peer_lower_bound_us=12.5, gate="ok")
    rows = [
        _row(blocks_per_sm=2, **bounds),
        _row(config="cfg2", registers=200, smem_bytes=4096, blocks_per_sm=1, **bounds),
    ]
    csrc = dict(source="csrc", op="", kernel="linear_cross_entropy_fwd_k", spill_bytes=0, smem_bytes=10240)
    rows += [{**csrc, "arch": "sm_80", "registers": 63}, {**csrc, "arch": "sm_90a", "registers": 70}]
    text = markdown(rows)
    assert "| attention | c | 12 | FlashAttention-2 | 12 |" in text
    assert "| sm_90 | `k` | c | 2 | 128–200 | 0 | 1–4 | 1–2 | wgmma | 0 | cp.async | ok |" in text
    assert "| `linear_cross_entropy_fwd_k` | 63 / 70 | 0 | 10240 |" in text


TOY_KERNELS = """
import triton
import triton.language as tl


@triton.jit
def toy_atomic_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.atomic_add(Y + offs % 7, tl.load(X + offs, mask=offs < n, other=0.0), mask=offs < n)


@triton.jit
def toy_store_kernel(X, Y, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + offs, tl.load(X + offs, mask=offs < n, other=0.0) * 2, mask=offs < n)
"""

AOT_SCRIPT = """
import torch
from ptft_fast.benchmarks import kernel_card
from ptft_fast.benchmarks.card_cases import Case
from ptft_fast.kernels._common import launch
import toy_kernels

def run():
    x, y = torch.empty(1000, device="meta"), torch.empty(7, device="meta")
    launch(toy_kernels.toy_atomic_kernel, (8,), X=x, Y=y, n=1000, BLOCK=128, num_warps=4, num_stages=1)
    launch(toy_kernels.toy_store_kernel, (8,), X=x, Y=x, n=1000, BLOCK=128, num_warps=4)

rows = kernel_card.card([Case("linear_cross_entropy", "toy", torch.float32, run)], archs=(90,), workers=1)
for r in rows:
    print(r["kernel"], r["programs"], r["global_atomics"], r["spill_bytes"], r["smem_bytes"], r["explicit_options"],
          r["gate"])
"""


@pytest.mark.triton
def test_aot_compile_and_gate_on_a_toy_kernel(tmp_path):
    """Launches recorded on meta tensors compile for sm_90 through Triton's AOT path (no GPU); a
    kernel with a global atomic under the cross-entropy op, and a launch without num_stages, fail
    the gate."""
    (tmp_path / "toy_kernels.py").write_text(TOY_KERNELS)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tmp_path), env.get("PYTHONPATH")]))
    env["PTFT_CARD_CACHE"] = str(tmp_path / "cache")
    done = subprocess.run(
        [sys.executable, "-W", "ignore", "-c", textwrap.dedent(AOT_SCRIPT)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    atomic, store = (line.split(" ", 6) for line in done.stdout.strip().splitlines())
    assert atomic[:6] == ["toy_atomic_kernel", "8", "1", "0", "0", "True"], atomic
    assert "global atomic" in atomic[6]
    assert store[:6] == ["toy_store_kernel", "8", "0", "0", "0", "False"], store
    assert "without explicit num_warps and num_stages" in store[6]
