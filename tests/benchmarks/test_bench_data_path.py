"""The data-path benchmark end to end at toy size: a row per (preset, objective) with the
measured fields, device and versions."""

import csv

from ptft_fast.benchmarks import bench_data_path


def test_short_documents_are_short_and_many():
    docs = bench_data_path.short_documents(3000)
    assert len(docs) == 3000 and len(set(docs)) > 2900
    assert all(6 <= len(d.split()) <= 30 for d in docs)


def test_bench_data_path_writes_rows(tmp_path):
    out = tmp_path / "dp.csv"
    argv = ["--sizes", "tiny", "--objectives", "clm", "--steps", "1", "--docs", "2000"]
    assert bench_data_path.main([*argv, "--cache", str(tmp_path / "cache"), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["objective"] for r in rows] == ["clm"]
    for r in rows:
        assert float(r["model_ms"]) > 0 and float(r["step_ms"]) > 0 and 0 <= float(r["wait_share"]) < 1
        assert float(r["data_wait_ms"]) <= float(r["step_ms"])
        assert int(r["corpus_docs"]) > 1500 and r["cpu_model"] and r["commit"] and r["torch"]
