"""``benchmarks/gpu_check.py --quick``: both methods, two sizes, one epoch on the CPU, results written."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_check  # noqa: E402


def test_quick_run_records_every_job(tmp_path):
    assert gpu_check.main(["--quick", "--out", str(tmp_path)]) == 0
    data = json.loads((tmp_path / "gpu_check_quick.json").read_text())
    records = data["records"]
    assert {(r["dataset"], r["method"]) for r in records} == {
        (d, m) for d in gpu_check.QUICK_SIZES for m in ("scvgae", "gnnimpute")
    }
    for r in records:
        assert "error" not in r, r
        assert r["epochs"] == 1 and r["seconds_per_epoch"] > 0 and r["host_peak_gb"] > 0 and r["device"] == "cpu"
    md = (tmp_path / "gpu_check_quick.md").read_text()
    assert md.count("| scvgae |") == 2 and "| ok |" in md


def test_a_refused_run_is_recorded_not_raised(monkeypatch):
    import scvgae_sc as sv

    def refuse(*args, **kwargs):
        raise MemoryError("needs about 80.0 GB, more than the 78.0 GB available")

    monkeypatch.setattr(sv.tl, "impute", refuse)
    adata = sv.datasets.simulate(50, 20, random_state=0)
    rec = gpu_check.run_one(adata, "scvgae", "cpu", 1)
    assert rec["error"].startswith("MemoryError: needs about 80.0 GB") and "seconds_per_epoch" not in rec
