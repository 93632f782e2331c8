"""Ahead-of-time compilation for the kernel report card: a recorded Triton launch compiled for a GPU
architecture on a machine without a GPU, and the facts read from what the compiler produced.

A launch is compiled the way a real one is: the kernel's own argument binder specializes the
arguments (pointer alignment, integers equal to 1 or divisible by 16, constexprs), the backend
parses the launch options (``num_stages`` defaults included), and Triton's bundled ptxas builds
the cubin. From the result: registers and spill bytes (ptxas' report), shared memory (the launch
metadata), tensor-core instruction kind, global atomics, cp.async / TMA, ldmatrix (PTX).

csrc kernels: the per-kernel lines of ``nvcc -Xptxas -v`` (registers, spills, static shared memory)
and the same facts as above from the PTX that compile keeps (``-keep``), per entry function.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import os
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

# Per-SM limits used for blocks per SM: registers, warps, resident blocks, shared memory (bytes,
# of which 1 KiB per block is reserved by the driver).
SM_LIMITS = {
    90: {"regs": 65536, "warps": 64, "blocks": 32, "smem": 233472, "smem_block": 232448},
    80: {"regs": 65536, "warps": 64, "blocks": 32, "smem": 167936, "smem_block": 166912},
}
# Bumped when Compiled gains or changes a field, so that older cached results are compiled again.
FACTS_VERSION = 2
CACHE_DIR = Path(os.environ.get("PTFT_CARD_CACHE", Path.home() / ".cache" / "ptft_fast" / "kernel_card"))


@dataclass(frozen=True)
class TensorArg:
    """What a kernel launch sees of a tensor argument: its dtype and a 16-byte-aligned address
    (torch allocations are), which is what Triton specializes pointers on."""

    dtype: torch.dtype

    def data_ptr(self) -> int:
        return 0


@dataclass(frozen=True)
class Job:
    """One compilation: kernel ``module.name`` (a JITFunction, or an Autotuner over one) with named
    arguments (TensorArg, scalars, constexprs) and launch options, for sm_<arch>."""

    module: str
    name: str
    args: tuple
    options: tuple
    arch: int

    def key(self) -> str:
        kernel = jit_function(self.module, self.name)
        text = repr((kernel.cache_key, self.args, self.options, self.arch, _triton_version(), FACTS_VERSION))
        return hashlib.sha256(text.encode()).hexdigest()[:24]


@dataclass
class Compiled:
    registers: int
    spill_bytes: int
    smem_bytes: int
    tensor_core: str
    global_atomics: int
    async_copy: str
    ldmatrix: int
    error: str = ""
    seconds: float = 0.0  # compile time on this machine (not a result; for the card's time budget)


def _triton_version() -> str:
    import triton

    return triton.__version__


def jit_function(module: str, name: str):
    kernel = getattr(importlib.import_module(module), name)
    while not hasattr(kernel, "cache_key"):  # an Autotuner (or a chain of them) over the JITFunction
        kernel = kernel.fn
    return kernel


def as_arg(value):
    """A recorded launch argument as a picklable stand-in (tensors become :class:`TensorArg`)."""
    if isinstance(value, torch.Tensor):
        return TensorArg(value.dtype)
    return value


PTX_FIELDS = ("tensor_core", "global_atomics", "async_copy", "ldmatrix")


def ptx_facts(ptx: str) -> dict:
    """What one kernel's PTX does: tensor-core kind ("wgmma" / "mma.sync" / "none"), static count
    of global atomic instructions, async copy kind ("cp.async", "tma", both joined by "+", or
    "none") and static count of ldmatrix instructions (.trans included)."""
    if "wgmma.mma_async" in ptx:
        tensor_core = "wgmma"
    elif re.search(r"\bmma\.sync\.", ptx):
        tensor_core = "mma.sync"
    else:
        tensor_core = "none"
    # atom./red. on global (or generic) addresses; shared-memory atomics are not global traffic
    atomics = sum(
        1
        for line in ptx.splitlines()
        if re.match(r"\s*(@!?%p\d+\s+)?(atom|red)\.", line) and ".shared" not in line
    )
    kinds = []
    if "cp.async.bulk.tensor" in ptx:
        kinds.append("tma")
    if re.search(r"cp\.async\.(ca|cg)\.", ptx):
        kinds.append("cp.async")
    return {
        "tensor_core": tensor_core,
        "global_atomics": atomics,
        "async_copy": "+".join(kinds) or "none",
        "ldmatrix": len(re.findall(r"\bldmatrix\.", ptx)),
    }


def ptx_entry_facts(ptx: str) -> dict[str, dict]:
    """:func:`ptx_facts` of every entry function of a PTX module (one file of ``nvcc -ptx`` or
    ``nvcc -keep`` output), keyed like :func:`parse_ptxas_log` as ``"function@sm_90a"`` with the
    arch of the module's ``.target`` line."""
    target = re.search(r"^\.target\s+(sm_\w+)", ptx, flags=re.M)
    if target is None:
        raise ValueError("PTX without a .target line")
    return {
        f"{m.group(1)}@{target.group(1)}": ptx_facts(m.group(2))
        for m in re.finditer(r"\.entry\s+(\S+?)\s*\((.*?)\n\}", ptx, flags=re.S)
    }


def parse_ptxas_log(log: str) -> dict[str, dict[str, int]]:
    """Per entry function of a ``ptxas -v`` log (also nvcc's ``-Xptxas -v``): registers, spill
    bytes (stores + loads) and static shared memory, keyed by ``(function, arch)`` as
    ``"function@sm_90a"``."""
    out: dict[str, dict[str, int]] = {}
    current = None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)' for '(sm_\w+)'", line)
        if m:
            current = f"{m.group(1)}@{m.group(2)}"
            out[current] = {"registers": 0, "spill_bytes": 0, "smem_bytes": 0}
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            out[current]["spill_bytes"] = int(m.group(1)) + int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            out[current]["registers"] = int(m.group(1))
            m = re.search(r"(\d+) bytes smem", line)
            out[current]["smem_bytes"] = int(m.group(1)) if m else 0
    return out


def _compile(job: Job) -> Compiled:
    import triton
    from triton import knobs
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    kernel = jit_function(job.module, job.name)
    target = GPUTarget("cuda", job.arch, 32)
    backend = make_backend(target)
    binder = create_function_from_signature(kernel.signature, kernel.params, backend)
    options = dict(job.options)
    bound, specialization, _ = binder(**dict(job.args), **options)
    opts, signature, constexprs, attrs = kernel._pack_args(backend, options, bound, specialization, options)
    src = ASTSource(kernel, signature, constexprs, attrs)
    log = io.StringIO()
    # ptxas' report is printed only when the cubin is built: never take Triton's cache here
    with (
        knobs.compilation.scope(),
        knobs.nvidia.scope(),
        contextlib.redirect_stdout(log),
    ):
        knobs.compilation.always_compile = True
        knobs.nvidia.dump_ptxas_log = True
        compiled = triton.compile(src, target=target, options=opts.__dict__)
    (report,) = parse_ptxas_log(log.getvalue()).values()
    return Compiled(
        registers=report["registers"],
        spill_bytes=report["spill_bytes"],
        smem_bytes=compiled.metadata.shared,
        **ptx_facts(compiled.asm["ptx"]),
    )


def compile_job(job: Job) -> Compiled:
    """Compiles ``job`` (or reads the result of an identical earlier compile from CACHE_DIR); a
    failure to compile is returned as ``error``, not raised."""
    path = CACHE_DIR / f"{job.key()}.json"
    if path.exists():
        return Compiled(**json.loads(path.read_text()))
    start = time.time()
    try:
        result = _compile(job)
        result.seconds = round(time.time() - start, 2)
    except Exception as exc:  # reported per row: one failing kernel must not hide the others
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        return Compiled(0, 0, 0, "none", 0, "none", 0, error=f"{type(exc).__name__}: {first[:200]}")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(asdict(result)))
    tmp.replace(path)
    return result


def blocks_per_sm(arch: int, registers: int, num_warps: int, smem: int) -> int:
    """Resident programs per SM allowed by registers (allocated per warp in 256-register units),
    warps, the block limit and shared memory."""
    lim = SM_LIMITS[arch]
    regs_per_warp = -(-max(registers, 1) * 32 // 256) * 256
    fits = [lim["blocks"], lim["warps"] // num_warps, lim["regs"] // (regs_per_warp * num_warps)]
    if smem:
        fits.append(lim["smem"] // (smem + 1024))
    return max(0, min(fits))


def nvcc_ptxas_report(source: Path, archs=(80, 90), nvcc: str = "nvcc") -> tuple[str, list[str]]:
    """``nvcc -Xptxas -v -keep`` of one csrc/*.cu for the given architectures (sm_90 as sm_90a),
    with the flags of setup.py's build: (the compiler's report (stderr), the PTX module of each
    architecture that the same compile produced)."""
    import tempfile

    gencode = []
    for arch in archs:
        code = f"sm_{arch}a" if arch == 90 else f"sm_{arch}"
        gencode += ["-gencode", f"arch=compute_{code.removeprefix('sm_')},code={code}"]
    with tempfile.TemporaryDirectory() as keep:
        cmd = [
            nvcc, "-std=c++17", "-O3", "--use_fast_math", "--expt-relaxed-constexpr", f"-I{source.parent}",
            "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__",
            "-D__CUDA_NO_BFLOAT16_CONVERSIONS__", "-D__CUDA_NO_HALF2_OPERATORS__",
            *gencode, "-Xptxas", "-v", "-keep", "-keep-dir", keep, "-c", str(source), "-o", os.devnull,
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"nvcc failed on {source}: {done.stderr[-2000:]}")
        return done.stderr, [p.read_text() for p in sorted(Path(keep).glob("*.ptx"))]


def demangle(names: list[str]) -> dict[str, str]:
    """C++ kernel names made readable (without parameter lists) by cu++filt or c++filt; names stay
    as they are when neither is installed."""
    for tool in ("cu++filt", "c++filt"):
        try:
            done = subprocess.run(
                [tool, "-p"], input="\n".join(names), capture_output=True, text=True, check=True
            )
        except (OSError, subprocess.CalledProcessError):
            continue
        return dict(zip(names, done.stdout.splitlines(), strict=False))
    return {n: n for n in names}
