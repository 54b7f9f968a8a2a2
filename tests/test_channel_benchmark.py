"""benchmarks/channel_benchmark.py on a tiny parent: every row at the same MACs ceiling with the shared recovery, the
table with the published anchors and where it ran, bad input in one line (exit 2)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from prune_tracker.core.models import build_model

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import channel_benchmark as bench  # noqa: E402
from machine import cpu_kind  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
DATA = ["--dataset", "synthetic", "--train-subset", "200", "--val-size", "100", "--device", "cpu"]


@pytest.fixture(scope="module")
def parent_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("parent") / "resnet8.pt"
    torch.save(build_model("resnet8", 10).state_dict(), path)
    return path


def test_methods_land_at_equal_macs_with_one_recovery(parent_file, tmp_path, capsys):
    out = tmp_path / "rows.json"
    code = bench.main(["run", "--parent", f"resnet8={parent_file}", *DATA, "--methods", "li_filters,group_norm",
                       "--epochs", "0.02", "--seeds", "0", "--out", str(out)])
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    parent, *pruned = rows
    assert parent["method"] == bench.PARENT and [r["method"] for r in pruned] == ["li_filters", "group_norm"]
    for row in pruned:
        assert row["status"] == "ok" and row["options"]["scope"] == "block" and row["epochs"] == 0.02
        assert 0.4 * parent["macs"] < row["macs"] <= 0.5 * parent["macs"]  # the smallest ratio under the ceiling
        assert row["params"] < parent["params"] and 0 <= row["test_accuracy"] <= 1 and "val_accuracy" in row
        assert row["latency_ms_b1"] > 0 and row["latency_ms_b128"] > 0 and cpu_kind() in row["latency_where"]
        assert row["where"].endswith(cpu_kind())
    assert pruned[0]["ratio"] == pruned[1]["ratio"]  # per-group cuts: the same widths reach the same MACs
    printed = capsys.readouterr().out
    assert "### resnet8" in printed and "Li et al. 2017, ResNet-56-pruned-B" in printed and cpu_kind() in printed


def test_rows_merge_by_key_and_the_table_shows_each_seed_and_the_mean(tmp_path):
    out = tmp_path / "rows.json"
    parent = {"arch": "resnet20", "parent": "p", "method": bench.PARENT, "seed": None, "ratio": 0.0, "status": "ok",
              "macs": 40e6, "params": 270e3, "activation_peak_fp32_bytes": 1.0, "latency_ms_b1": 1.0,
              "latency_ms_b128": 0.5, "val_accuracy": 0.9, "test_accuracy": 0.9}
    rows = [{**parent, "method": "taylor", "seed": s, "ratio": 0.5, "macs": 20e6, "test_accuracy": a,
             "search_seconds": 1.0, "prune_recover_seconds": 2.0} for s, a in ((0, 0.5), (1, 0.88))]
    header = {"argv": ["run"], "where": "H200", "cpu": "x (AVX2)", "torch": "2"}
    bench.save_rows(out, [parent, rows[0]], header)
    bench.save_rows(out, [parent, {**rows[0], "test_accuracy": 0.86}, rows[1]], header)  # seed 0 measured again
    data = json.loads(out.read_text())
    assert len(data["rows"]) == 3 and len(data["runs"]) == 1
    table = bench.markdown(data)
    assert "| taylor | 0 | 0.500 | 20.00M | 50.0% (2.00x) | 90.00% | 86.00% | -4.00 pt |" in table
    assert "| **taylor** | mean of 2 |" in table and "87.00% ± 1.41%" in table
    assert "Ran on: H200 (wall times); latencies on x (AVX2)" in table


@pytest.mark.parametrize("args,message", [
    (["--parent", "resnet8=/no/such.pt"], "--parent 'resnet8=/no/such.pt': no such file"),
    (["--parent", "resnet8"], "expected ARCH=FILE.pt (a state_dict) or a runs:/ or models:/ URI"),
    (["--parent", "resnet20=PARENT"], "not a state_dict of resnet20 with 10 classes"),
    (["--parent", "resnet8=PARENT", "--methods", "lamp"], "method 'lamp' does not remove channels"),
    (["--parent", "resnet8=PARENT", "--seeds", "a"], "seeds='a' is not allowed"),
    (["--parent", "resnet8=PARENT", "--macs-reduction", "1.5"], "--macs-reduction 1.5: must be in (0, 1)"),
])
def test_bad_input_is_one_line_exit_2(parent_file, capsys, args, message):
    args = [a.replace("PARENT", str(parent_file)) for a in args]
    assert bench.main(["run", *args, *DATA]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("Error: ") and message in err[0], err


def test_table_of_a_missing_file_is_one_line(tmp_path, capsys):
    assert bench.main(["table", "--out", str(tmp_path / "none.json")]) == 2
    assert capsys.readouterr().err.strip() == f"Error: --out '{tmp_path / 'none.json'}': no such file (write it with " \
                                              "`run --out`)"
