"""The MCV noise floor estimate (benchmarks/noise_floor.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parents[2] / "benchmarks"))
import noise_floor  # noqa: E402


@pytest.mark.parametrize("mean", [0.05, 0.3, 2.0, 7.0, 30.0, 120.0, 400.0])
@pytest.mark.parametrize("scale", [0.5, 1.3])
def test_log1p_variance_matches_sampling(mean, scale):
    y = np.random.default_rng(0).poisson(mean, 400_000)
    sampled = np.log1p(y / scale).var()
    assert noise_floor.log1p_variance(np.array([mean]), np.array([scale]))[0] == pytest.approx(sampled, rel=0.02)


def test_floor_lies_below_every_score():
    import bench

    f = noise_floor.floor("pbmc68k", 0)
    job = {"dataset": "pbmc68k", "seed": 0, "task": "denoising"}
    none, post = (bench.run_job({**job, "method": m})["mcv"] for m in ("none", "knn_post_2"))
    assert 0 < f < post < none
