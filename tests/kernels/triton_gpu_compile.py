"""Compile every Triton kernel for real GPU targets (sm_90, sm_80) on a machine without a GPU.

The interpreter (TRITON_INTERPRET=1) runs the kernels' Python semantics, not Triton's compiler:
type errors in compiled control flow, unsupported ops and tiles that overflow shared memory
only show up here. Triton ships ptxas, so the whole pipeline down to a cubin runs on CPU.
Run in a process *without* TRITON_INTERPRET (the kernels must be JITFunctions):
``python tests/kernels/triton_gpu_compile.py [--all]``; exit status 1 when any kernel fails.
"""

from __future__ import annotations

import os
import sys

assert os.environ.get("TRITON_INTERPRET") != "1", "run without TRITON_INTERPRET"

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from ptft_fast.kernels import attention as at  # noqa: E402
from ptft_fast.kernels import attention_bwd as ab  # noqa: E402
from ptft_fast.kernels import cross_entropy as ce  # noqa: E402
from ptft_fast.kernels import layer_norm as ln  # noqa: E402
from ptft_fast.kernels import lora as lo  # noqa: E402

SHARED_LIMIT = {90: 232448, 80: 166912}  # max dynamic shared memory per block (bytes)
CUDA = torch.device("cuda")  # only its type is read: GPU tile sizes


def compile_kernel(kernel, arch: int, num_warps: int, num_stages: int = 2, **args) -> int:
    """Compile ``kernel`` for sm_<arch>; args: "*bf16"-style pointer types, ints (i32), floats
    (fp32), or constexpr values. Returns the shared memory it needs (bytes)."""
    sig, const = {}, {}
    for i, name in enumerate(kernel.arg_names):
        value = args[name]
        if kernel.params[i].is_constexpr or value is None or isinstance(value, bool):
            sig[name], const[(i,)] = "constexpr", value
        elif isinstance(value, str):
            sig[name] = value
        else:
            sig[name] = "i32" if isinstance(value, int) else "fp32"
    src = ASTSource(fn=kernel, signature=sig, constexprs=const)
    opts = {"num_warps": num_warps, "num_stages": num_stages}
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options=opts).metadata.shared


def cases(dt: str, head_dims=(64, 128)):
    """(name, kernel, num_warps, num_stages, args) for every kernel at its GPU tile sizes."""
    ptr = "*" + dt
    tdt = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dt]
    ieee = dt == "fp32"
    for hidden in (768, 8192):
        bm, bn, w = ln._blocks(hidden)
        yield f"layer_norm fwd H={hidden}", ln._layer_norm_fwd_kernel, w, 2, dict(
            X=ptr, R=ptr, W=ptr, B=ptr, Y=ptr, HOUT=ptr, MEAN="*fp32", RSTD="*fp32", n_rows=1, n_cols=1,
            eps=1.0, p=0.5, seed=1, HAS_RES=True, HAS_W=True, HAS_B=True, DROPOUT=True, STORE_H=True,
            RMS=False, BLOCK_M=bm, BLOCK_N=bn,
        )  # fmt: skip
        yield f"layer_norm bwd H={hidden}", ln._layer_norm_bwd_kernel, w, 2, dict(
            DY=ptr, H=ptr, W=ptr, MEAN="*fp32", RSTD="*fp32", DHOUT=ptr, DX=ptr, DRES=ptr,
            DW_PART="*fp32", DB_PART="*fp32", n_rows=1, n_cols=1, p=0.5, seed=1, HAS_W=True,
            HAS_DHOUT=True, HAS_DRES=True, DROPOUT=True, RMS=True, BLOCK_M=bm, BLOCK_N=bn,
        )  # fmt: skip
    for d in head_dims:
        common = dict(
            CU_Q="*i32", CU_K="*i32", KPM="*i8", BIAS=ptr, sb_b=1, sb_h=1, sb_i=1, sb_j=1, LUT="*i32",
            TABLE="*fp32", n_heads=1, n_kv_heads=1, head_dim=1, max_q=1, max_k=1, scale=1.0, p=0.5, seed=1,
            VARLEN=True, CAUSAL=True, HAS_KPM=False, HAS_BIAS=True, HAS_REL=True, DROPOUT=True, IEEE=ieee,
        )  # fmt: skip
        bm, bn, bd, w, st = at.blocks(d, tdt, CUDA)
        yield (
            f"attention fwd D={d}",
            at._attention_fwd_kernel,
            w,
            st,
            dict(Q=ptr, K=ptr, V=ptr, OUT=ptr, LSE="*fp32", BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, **common),
        )
        bm, bn, bd, w, st = at.blocks(d, tdt, CUDA, backward=True)
        grads = dict(Q=ptr, K=ptr, V=ptr, DO=ptr, LSE="*fp32", DELTA="*fp32", DBIAS="*fp32", DTABLE="*fp32")
        yield (
            f"attention bwd dq D={d}",
            ab._attention_bwd_dq_kernel,
            w,
            st,
            dict(
                DQ=ptr, BIAS_GRAD=True, REL_GRAD=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_D=bd, **grads, **common
            ),
        )
        for fused in (True, False):
            yield f"attention bwd dkdv fused_dq={fused} D={d}", ab._attention_bwd_dkdv_kernel, w, st, dict(
                DK=ptr, DV=ptr, DQ32="*fp32", FUSED_DQ=fused, BIAS_GRAD=fused, REL_GRAD=fused,
                BLOCK_M=bn, BLOCK_N=bm, BLOCK_D=bd, **grads, **common,
            )  # fmt: skip
    yield (
        "attention dropout keep",
        at._attention_keep_kernel,
        4,
        2,
        dict(KEEP="*i8", n_heads=1, max_q=1, max_k=1, p=0.5, seed=1, BLOCK_M=32, BLOCK_N=32),
    )
    bm, bv, bh, w = ce._blocks(CUDA)
    rows = dict(HID=ptr, W=ptr, BIAS=ptr, LABELS="*i64", ROWS="*i32", COUNT="*i32")
    sizes = dict(HAS_BIAS=True, IEEE=ieee, BLOCK_M=bm, BLOCK_V=bv, BLOCK_H=bh)
    yield "cross_entropy fwd", ce._lce_fwd_kernel, w, 2, dict(
        M_PART="*fp32", L_PART="*fp32", ZL_PART="*fp32", ZS_PART="*fp32", n_rows=1, n_hidden=1, n_vocab=1,
        split_len=1, **rows, **sizes,
    )  # fmt: skip
    yield "cross_entropy bwd", ce._lce_bwd_kernel, w, 2, dict(
        LSE="*fp32", GRAD="*fp32", DH="*fp32", DW="*fp32", DB="*fp32", n_hidden=1, n_vocab=1, split_len=1,
        smoothing=0.1, z_loss=0.1, **rows, **sizes,
    )  # fmt: skip
    bm, bn, bk, w, st = lo._blocks(CUDA)
    drop = dict(p=0.5, seed=1, DROPOUT=True, IEEE=ieee)
    yield (
        "lora down",
        lo._lora_down_kernel,
        w,
        2,
        dict(X=ptr, A=ptr, T=ptr, n_rows=1, n_in=1, rank=1, BLOCK_M=bm, BLOCK_K=bk, BLOCK_R=16, **drop),
    )
    yield "lora fused matmul", lo._lora_fused_mm_kernel, w, st, dict(
        X=ptr, W=ptr, swk=1, swn=1, T=ptr, L=ptr, slj=1, sln=1, BIAS=ptr, Y=ptr, n_rows=1, n_out=1, n_red=1,
        rank=1, lora_scale=1.0, HAS_BIAS=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, BLOCK_R=16, **drop,
    )  # fmt: skip
    yield (
        "lora dA",
        lo._lora_da_kernel,
        w,
        2,
        dict(DT=ptr, X=ptr, DA=ptr, n_rows=1, n_in=1, rank=1, BLOCK_M=bm, BLOCK_N=bn, BLOCK_R=16, **drop),
    )


def main(full: bool) -> int:
    plan = [(90, "bf16", (64, 128)), (80, "fp32", (256,))]
    if full:
        plan = [(arch, dt, (64, 128, 256)) for arch in (90, 80) for dt in ("bf16", "fp16", "fp32")]
    failed = 0
    for arch, dt, dims in plan:
        for name, kernel, warps, stages, args in cases(dt, dims):
            try:
                shared = compile_kernel(kernel, arch, warps, stages, **args)
                ok = shared <= SHARED_LIMIT[arch]
                status = f"smem {shared / 1024:.0f} KiB" + ("" if ok else " > limit")
            except Exception as exc:  # report every failure, not just the first
                ok, status = False, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
            failed += not ok
            print(f"{'ok  ' if ok else 'FAIL'} sm_{arch} {dt} {name}: {status}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main("--all" in sys.argv))
