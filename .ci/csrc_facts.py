"""Compile facts of every csrc kernel, for the kernel report card and reviews (no GPU needed).

Per kernel and architecture (sm_80, sm_90a): registers, spill bytes and static shared memory
(nvcc -Xptxas -v), and how many cp.async, ldmatrix, mma.sync and global reduction instructions its
PTX holds (nvcc -ptx). Dynamic shared memory is sized at launch and is not in these logs: the
attention kernels state theirs next to their configurations (FwdCfg / BwdCfg::kSmem).

    python .ci/csrc_facts.py [--csv OUT.csv] [--jobs N]

Prints a table (or writes CSV); exits 1 if nvcc fails, 0 otherwise.
"""

from __future__ import annotations

import argparse
import csv
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ptft_fast.benchmarks.card_compile import parse_ptxas_log

ROOT = Path(__file__).resolve().parents[1]
FLAGS = [
    "-std=c++17", "-O3", "--use_fast_math", "--expt-relaxed-constexpr", f"-I{ROOT / 'csrc'}",
    "-D__CUDA_NO_HALF_OPERATORS__", "-D__CUDA_NO_HALF_CONVERSIONS__", "-D__CUDA_NO_BFLOAT16_CONVERSIONS__",
    "-D__CUDA_NO_HALF2_OPERATORS__",
]  # fmt: skip
ARCHS = {"sm_80": "compute_80", "sm_90a": "compute_90a"}
PTX_OPS = {
    "cp_async": r"\bcp\.async\.c[ag]\.",
    "ldmatrix": r"\bldmatrix\.",
    "mma_sync": r"\bmma\.sync\.",
    "global_atomics": r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.global\.",
    "of_them_v4": r"^\s*(?:@!?%p\d+\s+)?(?:atom|red)\.global\.add\.v4\.",
}


def ptxas_facts(log: str) -> dict[tuple[str, str], dict]:
    """(mangled kernel, arch) → regs, spill bytes, static smem from an nvcc -Xptxas -v log (the
    kernel report card's parser)."""
    return {
        tuple(key.rsplit("@", 1)): {
            "regs": f["registers"],
            "spill_bytes": f["spill_bytes"],
            "static_smem": f["smem_bytes"],
        }
        for key, f in parse_ptxas_log(log).items()
    }


def ptx_counts(ptx: str) -> dict[str, dict[str, int]]:
    """mangled kernel → count of each PTX_OPS instruction in its body."""
    out = {}
    for m in re.finditer(r"\.entry (\S+)\((.*?)\n\}\n", ptx, flags=re.S):
        out[m.group(1)] = {k: len(re.findall(p, m.group(2), flags=re.M)) for k, p in PTX_OPS.items()}
    return out


def demangle(names: list[str]) -> dict[str, str]:
    if not names or shutil.which("c++filt") is None:
        return {n: n for n in names}
    done = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True, check=True)
    pretty = [
        re.sub(r"ptft::(attn::)?\(anonymous namespace\)::", "", s).split("(")[0]
        for s in done.stdout.split("\n")
    ]
    return dict(zip(names, pretty, strict=False))


def source_rows(src: Path, nvcc: str) -> list[dict]:
    gencode = [f"-gencode=arch={c},code={a}" for a, c in ARCHS.items()]
    log = subprocess.run([nvcc, *FLAGS, *gencode, "-Xptxas", "-v", "-c", str(src), "-o", "/dev/null"],
                         capture_output=True, text=True)  # fmt: skip
    if log.returncode != 0:
        raise RuntimeError(f"nvcc failed on {src.name}:\n{log.stderr[-3000:]}")
    facts = ptxas_facts(log.stdout + log.stderr)
    counts = {}
    for arch, compute in ARCHS.items():
        ptx = subprocess.run([nvcc, *FLAGS, f"-arch={compute}", "-ptx", str(src), "-o", "-"],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        counts[arch] = ptx_counts(ptx)
    names = demangle(sorted({k for k, _ in facts}))
    rows = []
    for (kernel, arch), f in sorted(facts.items(), key=lambda kv: (kv[0][1], names[kv[0][0]])):
        rows.append({"source": src.name, "arch": arch, "kernel": names[kernel], **f,
                     **counts[arch].get(kernel, dict.fromkeys(PTX_OPS, 0))})  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--csv", help="write CSV here instead of printing a table")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--nvcc", default="nvcc")
    args = p.parse_args(argv)
    if shutil.which(args.nvcc) is None:
        print("csrc_facts: nvcc not found")
        return 0
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = [r for rs in pool.map(lambda s: source_rows(s, args.nvcc), sorted((ROOT / "csrc").glob("*.cu")))
                for r in rs]  # fmt: skip
    cols = ["source", "arch", "kernel", "regs", "spill_bytes", "static_smem", *PTX_OPS]
    if args.csv:
        with open(args.csv, "w", newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=cols)
            w.writeheader()
            w.writerows(rows)
        return 0
    print(" | ".join(cols))
    for r in rows:
        print(" | ".join(str(r[c]) for c in cols))
    return 0


if __name__ == "__main__":
    sys.exit(main())
