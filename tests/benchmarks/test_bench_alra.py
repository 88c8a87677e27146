"""The benchmark's ALRA (benchmarks/peers.py): rank choice, completion, and the scale mappings of the peers."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

PEERS_FILE = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("bench_peers", PEERS_FILE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def low_rank_with_dropout(seed: int, rank: int = 4, n: int = 300, g: int = 200, drop: float = 0.2):
    """Cells of ``rank`` types (type profile × a cell scale, a little noise), ``drop`` of the entries zeroed."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, rank, n)
    profiles = rng.gamma(0.5, 4.0, (rank, g))
    weights = np.eye(rank)[groups] * rng.uniform(0.7, 1.3, (n, 1))
    truth = np.maximum(weights @ profiles + rng.normal(0, 0.05, (n, g)), 0.05)
    dropped = rng.random((n, g)) < drop
    observed = np.where(dropped, 0.0, truth)
    return truth, observed, dropped


@pytest.mark.parametrize("n_signal", [4, 7])
def test_choose_k_reads_the_singular_value_spacings(peers, n_signal):
    # a matrix with a known spectrum: n_signal well-separated values, then a slowly decaying noise tail
    rng = np.random.default_rng(n_signal)
    U, _ = np.linalg.qr(rng.normal(size=(300, 150)))
    V, _ = np.linalg.qr(rng.normal(size=(200, 150)))
    d = np.r_[np.linspace(100, 40, n_signal), np.linspace(10, 1, 150 - n_signal) + rng.normal(0, 0.01, 150 - n_signal)]
    k, values = peers.choose_k((U * np.sort(d)[::-1]) @ V.T)
    assert k == n_signal
    assert values.shape == (100,)  # K = 100 singular values, as in the R defaults


@pytest.mark.parametrize("seed", [0, 1])
def test_alra_recovers_dropouts_and_keeps_nonzeros(peers, seed):
    truth, observed, dropped = low_rank_with_dropout(seed)
    out, k = peers.alra(observed, k=4, seed=seed)
    assert k == 4
    assert out.shape == observed.shape
    assert (out >= 0).all()
    # every observed non-zero stays non-zero (thresholded ones get their original value back)
    assert (out[observed > 0] > 0).all()
    # the dropped entries are filled much better than leaving the zeros ...
    err_alra = np.mean((out[dropped] - truth[dropped]) ** 2)
    err_zero = np.mean(truth[dropped] ** 2)
    assert err_alra < 0.3 * err_zero
    # ... and better than each gene's observed non-zero mean (the low-rank structure is used)
    gene_mean = np.nanmean(np.where(observed > 0, observed, np.nan), axis=0)
    err_mean = np.mean((np.broadcast_to(gene_mean, truth.shape)[dropped] - truth[dropped]) ** 2)
    assert err_alra < 0.5 * err_mean


def test_alra_with_chosen_rank_beats_zeros(peers):
    truth, observed, dropped = low_rank_with_dropout(2)
    out, k = peers.alra(observed, seed=0)
    assert 4 <= k < 100
    assert (out[observed > 0] > 0).all()
    assert np.mean((out[dropped] - truth[dropped]) ** 2) < np.mean(truth[dropped] ** 2)


def test_alra_rescales_to_observed_moments(peers):
    truth, observed, _ = low_rank_with_dropout(3)
    observed = np.where(observed > 0, observed + 2.0, 0.0)  # expressed everywhere: nothing clipped below zero
    out, _ = peers.alra(observed, k=4, seed=0)

    def nonzero_moments(X):
        Z = np.where(X > 0, X, np.nan)
        return np.nanmean(Z, axis=0), np.nanstd(Z, axis=0, ddof=1)

    (obs_mean, obs_sd), (out_mean, out_sd) = nonzero_moments(observed), nonzero_moments(out)
    # each gene's non-zeros are rescaled to the observed non-zeros' mean and sd (up to the few
    # entries at the 0.001-quantile threshold that are restored to their observed value)
    assert np.median(np.abs(out_mean / obs_mean - 1)) < 0.01
    assert np.median(np.abs(out_sd / obs_sd - 1)) < 0.01
    # without the rescaling the low-rank values are shrunk: their sd is clearly smaller
    U, d, Vt = np.linalg.svd(observed, full_matrices=False)
    low = (U[:, :4] * d[:4]) @ Vt[:4]
    assert np.median(low.std(axis=0, ddof=1) / obs_sd) < 0.9


def test_choose_k_refuses_tiny_matrix(peers):
    with pytest.raises(ValueError, match="at least 5 singular values"):
        peers.choose_k(np.random.default_rng(0).random((8, 8)))


def test_sqrt_mapping_matches_normalize(peers, toy_counts):
    import scvgae_sc as sv

    sv.pp.normalize(toy_counts)
    target = toy_counts.uns["scvgae_sc"]["normalize"]["normalized"]["target_sum"]
    mapped = peers.to_sqrt_scale(toy_counts.layers["counts"].toarray(), target)
    np.testing.assert_allclose(mapped, toy_counts.layers["normalized"].toarray(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("task", ["clustering", "masked"])
def test_run_alra_keeps_the_layer_scale(peers, task):
    truth, observed, _ = low_rank_with_dropout(4)
    layer = np.sqrt(observed) if task == "clustering" else np.expm1(observed)  # the job's layer scale
    Y, info = peers.run_alra(layer, task, seed=0)
    back = Y**2 if task == "clustering" else np.log1p(Y)
    ref, _ = peers.alra(observed, seed=0)
    np.testing.assert_allclose(back, ref, rtol=1e-6, atol=1e-8)
    assert info["alra_k"] >= 4
