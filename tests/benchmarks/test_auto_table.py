"""The auto-backend table is derived from recorded GPU benchmark rows."""

import csv
import json

from ptft_fast.benchmarks.auto_table import rank_backends, write_auto_table


def _row(op, provider, p50, shape="s1", device="NVIDIA H100 80GB HBM3"):
    return {"op": op, "provider": provider, "p50_ms": str(p50), "device": device, "shape": shape,
            "dtype": "bfloat16", "mode": "fwd+bwd", "flag": ""}  # fmt: skip


def test_fastest_backend_first_per_op_and_cpu_rows_ignored():
    rows = [
        _row("attention causal", "ptft-triton", 2.0), _row("attention causal", "ptft-cuda", 1.0),
        _row("attention causal", "ptft-triton", 2.0, shape="s2"), _row("attention causal", "ptft-cuda", 1.5, shape="s2"),
        _row("layer_norm+residual", "ptft-triton", 1.0), _row("layer_norm+residual", "ptft-cuda", 3.0),
        _row("lora_linear", "ptft-torch", 0.1, device="CPU x86_64 (2 cores)"),
        _row("lora_linear", "ptft-triton", 9.0, device="CPU x86_64 (2 cores)"),
        _row("linear_cross_entropy", "ptft-triton", 1.0),  # alone on its case: nothing to compare
    ]  # fmt: skip
    table = rank_backends(rows)
    assert table == {"attention": ["cuda", "triton"], "layer_norm": ["triton", "cuda"]}


def test_write_auto_table_reads_csvs(tmp_path):
    path = tmp_path / "ops.csv"
    rows = [_row("lora_linear", "ptft-cuda", 2.0), _row("lora_linear", "ptft-triton", 1.0)]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "auto.json"
    write_auto_table([path], out)
    assert json.loads(out.read_text())["cuda"] == {"lora_linear": ["triton", "cuda"]}
