"""Data-parallel training (torch.distributed, gloo on CPU): two processes started by torchrun.

One torchrun launch (``_ddp_worker.py``, about 25 s, mostly imports) serves all the two-process tests; the
single-process references run here.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import scvgae_sc as sv
from scvgae_sc.nn import SCVGAE, Trainer, init_from_env, is_distributed, rank, world_size
from scvgae_sc.tl._common import sharded_batches, split_batches

WORKER = Path(__file__).with_name("_ddp_worker.py")
TIMEOUT_S = 300  # a hung collective fails the test instead of blocking CI
#: Tolerance on parameters, two ranks vs one process that accumulates their batches. The two differ only in the
#: order of the float32 sums that average the batch gradients. With one batch per rank and step it is exact: DDP
#: computes (g0 + g1) / 2, accumulation g0 / 2 + g1 / 2, equal in binary floating point (halving is exact) —
#: measured max |difference| 0.0 on every parameter. With k = 3 batches per rank and step, ((g0 + g2 + g4) / 3 +
#: (g1 + g3 + g5) / 3) / 2 against the running sum of g_i / 6 differ by about one rounding (1e-7 relative) per
#: step; after 12 Adam steps of lr 1e-2 the measured max |difference| is 6.4e-7. 1e-5 is 15 times that and a
#: thousandth of one step: a missing or wrong reduction moves parameters by about lr per step and fails.
ATOL = 1e-5
#: Parameters whose exact gradient is zero, left out of the comparison: the bias of the decoder's Linear layer right
#: before its BatchNorm, which subtracts it again. Its computed gradient is rounding noise that Adam scales to
#: steps of about lr, so it drifts differently on the two sides (0.037 measured with k = 3; bit-identical with
#: k = 1) without changing what the model computes.
NO_GRADIENT = {"decoder.0.bias"}


def _load_worker():
    spec = importlib.util.spec_from_file_location("_ddp_worker", WORKER)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


worker = _load_worker()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """Run the worker on two gloo ranks under torchrun; the folder with each rank's results."""
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.fail("torch.distributed with the gloo backend is needed (every CPU build of torch has it)")
    out = tmp_path_factory.mktemp("ddp")
    package_root = str(Path(sv.__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p),
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc-per-node=2"]
    cmd += ["--master-addr=127.0.0.1", f"--master-port={_free_port()}", str(WORKER), str(out)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and the two workers it started
        log, _ = proc.communicate()
        pytest.fail(f"two-process run did not finish in {TIMEOUT_S} s:\n{log.decode(errors='replace')[-4000:]}")
    assert proc.returncode == 0, log.decode(errors="replace")[-6000:]
    return out


def _rank_files(folder: Path, pattern: str) -> list[Path]:
    return [folder / pattern.format(r) for r in range(2)]


# ------------------------------------------------------------------------------------------ without a group
def test_helpers_without_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert (is_distributed(), rank(), world_size()) == (False, 0, 1)
    assert init_from_env("cpu") == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert init_from_env("cpu") == torch.device("cpu")
    assert not torch.distributed.is_initialized()
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        init_from_env("cpu")


@pytest.mark.parametrize(("n", "batch_size", "world"), [(64, 8, 2), (100, 16, 3), (9, 2, 2), (5, 512, 2), (7, 3, 3)])
def test_sharded_batches_partition_the_epoch(n, batch_size, world):
    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    steps = sharded_batches(order, batch_size, world)
    assert all(len(step) == world for step in steps)
    flat = [b for step in steps for b in step]
    np.testing.assert_array_equal(torch.cat(flat).numpy(), order.numpy())  # consecutive parts, every cell once
    sizes = [len(b) for b in flat]
    assert min(sizes) >= 2 and max(sizes) - min(sizes) <= 1
    assert max(sizes) <= max(batch_size, 2 * -(-n // (2 * world)))
    for r in range(world):  # rank r takes parts r, r + world, ...
        mine = split_batches(order, batch_size, world_size=world, rank=r)
        assert len(mine) == len(steps)
        for b, expected in zip(mine, flat[r::world], strict=True):
            assert torch.equal(b, expected)
    with pytest.raises(ValueError, match="processes"):
        sharded_batches(torch.arange(3), 2, 2)


def test_split_batches_single_process_unchanged():
    order = torch.arange(1025)
    assert [len(b) for b in split_batches(order, 512)] == [512, 513]
    assert [len(b) for b in split_batches(order, 512, world_size=1, rank=0)] == [512, 513]


def _linear_fit(batches, k, epochs=3):
    """A linear model (no batch statistics) trained on fixed batches; returns its parameters."""
    g = torch.Generator().manual_seed(0)
    X, Y = torch.randn(48, 5, generator=g), torch.randn(48, 2, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 2)

    def step(module, epoch):
        for rows in batches:
            yield torch.nn.functional.mse_loss(module(X[rows]), Y[rows])

    trainer = Trainer(model, lr=1e-2, max_epochs=epochs, device="cpu", progress_bar=False, accumulate_grad_batches=k)
    trainer.fit(step)
    return [p.detach().clone() for p in model.parameters()]


def test_accumulate_grad_batches_equals_the_merged_batch():
    b = torch.arange(48).split(12)  # equal sizes: the mean of two batch means is the mean over both
    merged = _linear_fit([torch.cat(b[:2]), torch.cat(b[2:])], 1)
    accumulated = _linear_fit(list(b), 2)
    plain = _linear_fit(list(b), 1)
    for p, q, r in zip(accumulated, merged, plain, strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)
        assert not torch.allclose(p, r, atol=1e-4)  # four steps per epoch instead of two: a different result
    # an epoch's last, incomplete group steps with the mean over its own batches
    b = torch.arange(36).split(12)
    for p, q in zip(_linear_fit(list(b), 2), _linear_fit([torch.cat(b[:2]), b[2]], 1), strict=True):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_accumulate_grad_batches_validated(bad):
    with pytest.raises(ValueError, match="accumulate_grad_batches"):
        Trainer(SCVGAE(4, 3, hidden=2, decoder_hidden=2), lr=1e-3, max_epochs=1, accumulate_grad_batches=bad)


# ------------------------------------------------------------------------------------------ two processes
@pytest.mark.parametrize(("variant", "k"), worker.TRAINER_RUNS)
def test_two_ranks_equal_one_process_accumulating_their_batches(two_ranks, variant, k):
    """Rank r trains on batches r, r + 2, ... of each epoch, stepping every k of its batches; one process steps
    every 2k batches of the same order (the incomplete last group of an epoch included)."""
    ranks = [torch.load(f) for f in _rank_files(two_ranks, f"trainer_{variant}_k{k}_rank{{}}.pt")]
    for name, v in ranks[0]["state"].items():  # every parameter and (averaged) buffer the same on both ranks
        assert torch.equal(v, ranks[1]["state"][name]), name
    assert ranks[0]["loss"] == ranks[1]["loss"]

    reference, history = worker.train(variant, world=1, rank=0, accumulate=2 * k)
    params = [name for name, _ in SCVGAE(4, 3, hidden=2, decoder_hidden=2).named_parameters()]
    params = [name for name in params if name not in NO_GRADIENT]
    diffs = {name: float((ranks[0]["state"][name] - reference[name]).abs().max()) for name in params}
    print(f"{variant}, k={k}: max |two ranks - one process| over parameters = {max(diffs.values()):.3g}")
    assert max(diffs.values()) <= ATOL, diffs
    np.testing.assert_allclose(ranks[0]["loss"], history["loss"], rtol=1e-6)
    # the comparison can fail: stepping twice as often ends far from both
    other, _ = worker.train(variant, world=1, rank=0, accumulate=k)
    assert max(float((other[name] - reference[name]).abs().max()) for name in params) > 1e-3


@pytest.fixture(scope="module")
def impute_ranks(two_ranks) -> list[dict[str, np.ndarray]]:
    return [dict(np.load(f)) for f in _rank_files(two_ranks, "impute_rank{}.npz")]


@pytest.mark.parametrize("run", worker.IMPUTE_RUNS)
def test_impute_under_torchrun_gives_every_rank_the_same_result(impute_ranks, run):
    r0, r1 = impute_ranks
    keys = sorted(k for k in r0 if k.startswith(f"{run}/"))
    assert keys == sorted(k for k in r1 if k.startswith(f"{run}/"))
    assert f"{run}/history/loss" in keys and len(r0[f"{run}/history/loss"]) == 2
    for k in keys:
        np.testing.assert_array_equal(r0[k], r1[k], err_msg=k)
    assert int(r0[f"{run}/world_size"]) == 2
    assert np.isfinite(r0[f"{run}/layer"]).all()


def test_filename_refused_with_several_processes(impute_ranks):
    assert all(bool(r["filename_refused"]) for r in impute_ranks)


def test_gnnimpute_under_torchrun_equals_one_process(impute_ranks):
    """Every rank runs GNNImpute's one full-graph step per epoch; averaging equal gradients changes nothing."""
    single = worker.impute_all(worker.prepared_pbmc68k(), runs=("gnnimpute",))
    assert int(single["gnnimpute/world_size"]) == 1
    diff = np.abs(impute_ranks[0]["gnnimpute/layer"] - single["gnnimpute/layer"]).max()
    print(f"gnnimpute: max |two ranks - one process| = {diff:.3g}")
    np.testing.assert_allclose(impute_ranks[0]["gnnimpute/layer"], single["gnnimpute/layer"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        impute_ranks[0]["gnnimpute/history/loss"], single["gnnimpute/history/loss"], rtol=1e-6
    )
