"""The kernel report card: every Triton kernel compiled for sm_90 and sm_80 on a machine without a
GPU, for every autotune config, at the benchmark shapes and at edge shapes, plus every csrc kernel
through ``nvcc -Xptxas -v -keep`` (ptxas report and PTX of one compile); what each compiled kernel
needs and does (registers, spills, shared memory, blocks per SM, tensor-core instructions, global
atomics, cp.async / TMA, ldmatrix) and the analytic lower-bound time of each op next to the peer
design's.

Writes ``benchmarks/results/kernel_card.csv`` (one row per case × kernel launch × config × arch,
then the csrc rows) and, with ``--doc``, the card's table into docs/gpu.md. ``--gate`` exits 1 when
a rule fails (see :func:`gate`). Compiles run in parallel and are cached by kernel source, arguments
and options (``PTFT_CARD_CACHE``, default ~/.cache/ptft_fast/kernel_card).

Run: ``ptft bench card [--gate] [--doc docs/gpu.md] [--archs 90,80] [--csrc-logs DIR]``.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from ptft_fast.benchmarks.card_compile import (
    PTX_FIELDS,
    SM_LIMITS,
    Job,
    as_arg,
    blocks_per_sm,
    compile_job,
    demangle,
    nvcc_ptxas_report,
    parse_ptxas_log,
    ptx_entry_facts,
)

REPO = Path(__file__).resolve().parents[1]
CSV_PATH = REPO / "benchmarks" / "results" / "kernel_card.csv"
DOC_BEGIN, DOC_END = "<!-- kernel-card:begin -->", "<!-- kernel-card:end -->"
LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")
# ops whose kernels must not use global atomics (the cross-entropy design has none)
NO_ATOMIC_OPS = ("linear_cross_entropy",)
# csrc kernels that load their tiles by cp.async and their mma operands by ldmatrix (the
# FlashAttention-2 minimum: attention forward, and the backward's dK/dV + dQ kernel), on every
# arch the csrc build targets; matched in the demangled (or, without c++filt, mangled) name
CSRC_ASYNC_KERNELS = ("attention_fwd_cuda", "attention_bwd_cuda")
CSRC_ARCHS = ("sm_80", "sm_90a")
FIELDS = (
    "source", "arch", "op", "case", "dtype", "kernel", "config", "explicit_options", "pruned", "programs",
    "registers", "spill_bytes", "smem_bytes", "smem_limit", "blocks_per_sm", "tensor_core", "global_atomics",
    "async_copy", "ldmatrix", "lower_bound_us", "peer", "peer_lower_bound_us", "error", "gate",
    "triton", "commit", "timestamp",
)  # fmt: skip


def _targets(archs):
    from ptft_fast.kernels._common import A100, H100

    return [t for t in (H100, A100) if t.arch in archs]


def _config_label(kwargs: dict) -> str:
    tiles = " ".join(f"{k.removeprefix('BLOCK_')}={v}" for k, v in kwargs.items() if k.startswith("BLOCK_"))
    return f"{tiles} w{kwargs.get('num_warps', '?')} s{kwargs.get('num_stages', '?')}".strip()


def _programs(grid, kwargs: dict) -> int:
    dims = grid(kwargs) if callable(grid) else grid
    total = 1
    for d in dims:
        total *= int(d)
    return total


def _expand(launch, target):
    """(kwargs with the config's meta-parameters, pruned?) per config of a recorded launch: one for
    a plain kernel, every autotune config for an Autotuner (pruned: dropped by its pruner here)."""
    kernel = launch.kernel
    if not hasattr(kernel, "configs"):
        yield dict(launch.kwargs), False
        return
    from ptft_fast.kernels._common import recording_launches

    kept = kernel.configs
    prune = getattr(kernel, "early_config_prune", None)
    if prune is not None:
        with recording_launches(target):  # the pruner reads the target of the meta tensors
            kept = prune(kernel.configs, dict(launch.kwargs))
    for config in kernel.configs:
        yield {**launch.kwargs, **config.all_kwargs()}, config not in kept


def plan(cases, archs=(90, 80)):
    """(rows without compile results, jobs): one row per case × launch × config × arch."""
    from ptft_fast.kernels._common import recording_launches

    rows, jobs, seen = [], [], set()
    for case in cases:
        for target in _targets([a for a in archs if a in case.archs]):
            with recording_launches(target) as launches:
                case.run()
            for launch in launches:
                base = launch.kernel
                while not hasattr(base, "cache_key"):
                    base = base.fn
                for kwargs, pruned in _expand(launch, target):
                    explicit = all(k in kwargs for k in ("num_warps", "num_stages"))
                    args = tuple(sorted((k, as_arg(v)) for k, v in kwargs.items() if k not in LAUNCH_OPTIONS))
                    opts = tuple(sorted((k, v) for k, v in kwargs.items() if k in LAUNCH_OPTIONS))
                    job = Job(base.fn.__module__, base.fn.__name__, args, opts, target.arch)
                    if (case.label, job) in seen:  # the same compile again (e.g. the next chunk)
                        continue
                    seen.add((case.label, job))
                    jobs.append(None if pruned else job)  # a pruned config never launches here
                    rows.append({
                        "source": "triton", "arch": f"sm_{target.arch}", "op": case.op, "case": case.label,
                        "dtype": str(case.dtype).removeprefix("torch."), "kernel": base.fn.__name__,
                        "config": _config_label(kwargs), "explicit_options": explicit, "pruned": pruned,
                        "programs": _programs(launch.grid, kwargs), "num_warps": kwargs.get("num_warps", 4),
                        "smem_limit": SM_LIMITS[target.arch]["smem_block"],
                        "lower_bound_us": case.lower_bound_us(case.ours), "peer": case.peer_name,
                        "peer_lower_bound_us": case.lower_bound_us(case.peer),
                    })  # fmt: skip
    return rows, jobs


def compile_all(jobs, workers: int):
    """Compile results in ``jobs`` order (None for None); identical jobs are compiled once."""
    unique = list(dict.fromkeys(j for j in jobs if j is not None))
    if workers <= 1:
        results = dict(zip(unique, map(compile_job, unique), strict=True))
    else:
        # Triton 3.9 warns once per process that FP fusion defaults to on: what a launch gets
        os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
        env_interp = os.environ.pop("TRITON_INTERPRET", None)
        try:
            with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
                results = dict(zip(unique, pool.map(compile_job, unique), strict=True))
        finally:
            if env_interp is not None:
                os.environ["TRITON_INTERPRET"] = env_interp
    return [None if j is None else results[j] for j in jobs]


def csrc_rows(logs: str, ptx_modules: list[str] = ()) -> list[dict]:
    """One row per csrc kernel and arch from ``nvcc -Xptxas -v`` output (registers, spills, static
    shared memory) and the PTX modules of the same compile (tensor-core kind, global atomics,
    async copy, ldmatrix; empty where no PTX of that kernel and arch was given)."""
    report = parse_ptxas_log(logs)
    ptx: dict[str, dict] = {}
    for module in ptx_modules:
        ptx.update(ptx_entry_facts(module))
    names = demangle(sorted({k.rsplit("@", 1)[0] for k in report}))
    rows = []
    for key, facts in sorted(report.items()):
        fn, arch = key.rsplit("@", 1)
        rows.append({"source": "csrc", "arch": arch, "op": "", "kernel": names.get(fn, fn), **facts,
                     **ptx.get(key, dict.fromkeys(PTX_FIELDS, ""))})  # fmt: skip
    return rows


def _csrc_rules(r: dict) -> list[str]:
    """What one csrc row breaks: it spills; it is a CSRC_ASYNC_KERNELS kernel without cp.async or
    ldmatrix in its PTX (or without PTX facts)."""
    broken = [f"spills {r['spill_bytes']} B"] if r["spill_bytes"] else []
    if any(k in r["kernel"] for k in CSRC_ASYNC_KERNELS):
        if r["async_copy"] == "":
            return [*broken, "no PTX facts (cp.async / ldmatrix unknown)"]
        if "cp.async" not in r["async_copy"]:
            broken.append("no cp.async in its PTX")
        if not r["ldmatrix"]:
            broken.append("no ldmatrix in its PTX")
    return broken


def _triton_rules(r: dict) -> list[str]:
    """What one Triton row (a config that can launch) breaks."""
    if r.get("error"):
        return [f"does not compile: {r['error']}"]
    broken = []
    if not r["explicit_options"]:
        broken.append("launched without explicit num_warps and num_stages")
    if r["spill_bytes"]:
        broken.append(f"spills {r['spill_bytes']} B")
    if r["smem_bytes"] > r["smem_limit"]:
        broken.append(f"shared memory {r['smem_bytes']} B > {r['smem_limit']} B")
    if r["op"] in NO_ATOMIC_OPS and r["global_atomics"]:
        broken.append(f"{r['global_atomics']} global atomic instructions")
    if r["arch"] == "sm_90" and r["dtype"] in ("bfloat16", "float16") and r["tensor_core"] == "mma.sync":
        broken.append("mma.sync, not wgmma, on sm_90")
    return broken


def gate(rows: list[dict]) -> list[str]:
    """The CI rules. Triton rows, of every config that can launch (an autotune config the pruner
    drops for a shape and GPU never runs there, and is not compiled): every launch sets num_warps
    and num_stages; no spills; shared memory within the GPU's per-block limit (sm_90: 232,448 B);
    zero global atomics in the cross-entropy kernels; on sm_90 with 16-bit inputs a kernel that
    uses tensor cores uses wgmma (Hopper's warpgroup MMA), not Ampere's mma.sync. csrc rows (when
    there are any): no spills; the attention forward and backward kernels (CSRC_ASYNC_KERNELS)
    are compiled for each of CSRC_ARCHS and have cp.async and ldmatrix in their PTX there."""
    failures = []
    for r in rows:
        if r["source"] == "triton" and not r["pruned"]:
            what = f"{r['arch']} {r['kernel']} [{r['config']}] @ {r['case']}"
            failures += [f"{what}: {b}" for b in _triton_rules(r)]
        elif r["source"] == "csrc":
            failures += [f"{r['arch']} csrc {r['kernel']}: {b}" for b in _csrc_rules(r)]
    csrc = [r for r in rows if r["source"] == "csrc"]
    for arch in CSRC_ARCHS if csrc else ():
        for k in CSRC_ASYNC_KERNELS:
            if not any(r["arch"] == arch and k in r["kernel"] for r in csrc):
                failures.append(f"{arch} csrc {k}: not compiled")
    return failures


def card(
    cases, archs=(90, 80), workers: int | None = None, csrc: tuple[str, list[str]] | None = None
) -> list[dict]:
    """All rows of the card (Triton, then csrc when ``csrc`` — the ptxas logs and PTX modules of
    :func:`csrc_reports` — is given), gate column filled."""
    rows, jobs = plan(cases, archs)
    for row, result in zip(rows, compile_all(jobs, workers or os.cpu_count() or 1), strict=True):
        warps = row.pop("num_warps")
        if result is None:
            row["gate"] = "pruned"
            continue
        row.update(vars(result))
        row["blocks_per_sm"] = blocks_per_sm(
            int(row["arch"].removeprefix("sm_")), result.registers, warps, result.smem_bytes
        )
        row["gate"] = "; ".join(_triton_rules(row)) or "ok"
    if csrc is not None:
        for row in csrc_rows(*csrc):
            rows.append({**row, "gate": "; ".join(_csrc_rules(row)) or "ok"})
    return rows


def write_csv(rows: list[dict], path: Path) -> None:
    import torch

    from ptft_fast.benchmarks.harness import environment

    env = environment(torch.device("cpu"))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            cells = {k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}
            writer.writerow({**{k: env[k] for k in ("triton", "commit", "timestamp")}, **cells})


def _fmt_us(v) -> str:
    return "" if v is None else f"{v:.0f}" if v >= 10 else f"{v:.1f}"


def markdown(rows: list[dict]) -> str:
    """The card as markdown: per op × case the lower bounds, per kernel the sm_90 facts over its
    configs (ranges), the gate's verdict, and the csrc kernels."""
    out = ["| op | case | lower bound, ours (µs) | peer | lower bound, peer (µs) |", "|---|---|---|---|---|"]
    seen = set()
    for r in rows:
        key = (r["op"], r.get("case"))
        if (
            r["source"] == "triton"
            and r["arch"] == "sm_90"
            and r["lower_bound_us"] is not None
            and key not in seen
        ):
            seen.add(key)
            out.append(
                f"| {r['op']} | {r['case']} | {_fmt_us(r['lower_bound_us'])} | {r['peer']} "
                f"| {_fmt_us(r['peer_lower_bound_us'])} |"
            )
    out += ["", "| arch | kernel | case | configs | regs | spill B | smem KiB | blocks/SM | MMA | atomics | async copy | ldmatrix | gate |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if r["source"] == "triton" and not r["pruned"]:
            groups.setdefault((r["arch"], r["kernel"], r["case"]), []).append(r)

    def span(values, fmt=str):
        lo, hi = min(values), max(values)
        return fmt(lo) if lo == hi else f"{fmt(lo)}–{fmt(hi)}"

    for (arch, kernel, case), rs in groups.items():
        ok = [r for r in rs if not r.get("error")]
        if not ok:
            out.append(f"| {arch} | `{kernel}` | {case} | {len(rs)} | | | | | | | | | does not compile |")
            continue
        verdict = "ok" if all(r["gate"] == "ok" for r in rs) else "FAIL"
        out.append(
            f"| {arch} | `{kernel}` | {case} | {len({r['config'] for r in rs})} | {span([r['registers'] for r in ok])} "
            f"| {max(r['spill_bytes'] for r in ok)} | {span([r['smem_bytes'] for r in ok], lambda b: f'{b / 1024:.0f}')} "
            f"| {span([r['blocks_per_sm'] for r in ok])} | {'/'.join(sorted({r['tensor_core'] for r in ok}))} "
            f"| {max(r['global_atomics'] for r in ok)} | {'/'.join(sorted({r['async_copy'] for r in ok}))} "
            f"| {span([r['ldmatrix'] for r in ok])} | {verdict} |"
        )  # fmt: skip
    csrc: dict[str, dict[str, dict]] = {}
    for r in rows:
        if r["source"] == "csrc":
            csrc.setdefault(r["kernel"], {})[r["arch"]] = r
    if csrc:
        out += ["", "| csrc kernel | regs sm_80 / sm_90a | spill B | static smem B | MMA | atomics | async copy | ldmatrix | gate |",
                "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip

        def per_arch(by_arch, key):
            values = [str(by_arch[a][key]) if a in by_arch else "–" for a in CSRC_ARCHS]
            return values[0] if len(set(values)) == 1 else " / ".join(values)

        for kernel, by_arch in csrc.items():
            spill = max(r["spill_bytes"] for r in by_arch.values())
            smem = max(r["smem_bytes"] for r in by_arch.values())
            verdict = "ok" if all(r.get("gate", "ok") == "ok" for r in by_arch.values()) else "FAIL"
            out.append(
                f"| `{kernel}` | {' / '.join(str(by_arch[a]['registers']) if a in by_arch else '–' for a in CSRC_ARCHS)} "
                f"| {spill} | {smem} | {per_arch(by_arch, 'tensor_core')} | {per_arch(by_arch, 'global_atomics')} "
                f"| {per_arch(by_arch, 'async_copy')} | {per_arch(by_arch, 'ldmatrix')} | {verdict} |"
            )  # fmt: skip
    return "\n".join(out)


def write_doc(rows: list[dict], path: Path) -> None:
    """Replaces the text between the kernel-card markers in ``path`` with :func:`markdown`."""
    text = path.read_text()
    if DOC_BEGIN not in text or DOC_END not in text:
        raise ValueError(f"{path}: no {DOC_BEGIN} … {DOC_END} section to write the card into")
    head, rest = text.split(DOC_BEGIN, 1)
    _, tail = rest.split(DOC_END, 1)
    path.write_text(f"{head}{DOC_BEGIN}\n{markdown(rows)}\n{DOC_END}{tail}")


def csrc_reports(csrc_dir: Path, log_dir: str | None, workers: int) -> tuple[str, list[str]]:
    """(``nvcc -Xptxas -v`` output, PTX modules) of every csrc/*.cu for sm_80 and sm_90a: read from
    ``log_dir`` (``*.log`` and ``*.ptx`` written by .ci/check_csrc.sh with PTXAS_LOG_DIR) when
    given, else compiled here."""
    if log_dir:
        logs = "\n".join(p.read_text() for p in sorted(Path(log_dir).glob("*.log")))
        return logs, [p.read_text() for p in sorted(Path(log_dir).glob("*.ptx"))]
    sources = sorted(csrc_dir.glob("*.cu"))
    with ProcessPoolExecutor(workers) as pool:
        reports = list(pool.map(nvcc_ptxas_report, sources))
    return "\n".join(log for log, _ in reports), [m for _, modules in reports for m in modules]


def main(args: argparse.Namespace) -> int:
    """``ptft bench card``: args.archs (compute capabilities), args.jobs (parallel compiles or None:
    CPU count), args.csrc ("compile" | "skip"), args.csrc_logs (folder or None), args.csv (path or
    None: benchmarks/results/kernel_card.csv), args.doc (markdown file or None), args.gate."""
    import shutil

    from ptft_fast.benchmarks.card_cases import all_cases

    start = time.time()
    archs = tuple(args.archs)
    workers = args.jobs or os.cpu_count() or 1
    csrc = None
    if args.csrc_logs or (args.csrc == "compile" and shutil.which("nvcc")):
        csrc = csrc_reports(REPO / "csrc", args.csrc_logs, workers)
    rows = card(all_cases(), archs, workers, csrc)
    csv_path = Path(args.csv or CSV_PATH)
    write_csv(rows, csv_path)
    print(markdown(rows))
    print(f"[ptft bench card] {len(rows)} rows → {csv_path} in {time.time() - start:.0f} s")
    if args.doc:
        write_doc(rows, Path(args.doc))
        print(f"[ptft bench card] table written into {args.doc}")
    failures = gate(rows)
    for f in failures:
        print(f"[ptft bench card] GATE FAIL {f}")
    if args.gate:
        print(
            f"[ptft bench card] gate: {'FAILED, ' + str(len(failures)) + ' rule(s)' if failures else 'passed'}"
        )
        return 1 if failures else 0
    return 0
