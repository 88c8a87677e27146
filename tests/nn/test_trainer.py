from __future__ import annotations

import pytest
import torch

from scvgae_sc.nn import SCVGAE, GNNImputeModule, Trainer, fast_bf16, resolve_device, resolve_precision, scvgae_loss

N_CELLS, N_GENES = 50, 30


def random_knn_graph(n: int, k: int = 5, *, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pts = torch.randn(n, 4, generator=g)
    dist = torch.cdist(pts, pts)
    dist.fill_diagonal_(float("inf"))
    dst = dist.topk(k, largest=False).indices.reshape(-1)
    src = torch.arange(n).repeat_interleave(k)
    ei = torch.unique(torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1), dim=1)
    return ei, torch.rand(ei.shape[1], generator=g) + 0.5


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1)
    counts = torch.poisson(torch.rand(N_CELLS, N_GENES, generator=g) * 4)
    sf = counts.sum(1) / counts.sum(1).median()
    x = torch.sqrt(torch.log1p(counts))
    ei, ew = random_knn_graph(N_CELLS)
    return x, counts, sf, ei, ew


def make_scvgae(seed=0, **kw):
    torch.manual_seed(seed)
    return SCVGAE(N_GENES, N_CELLS, hidden=16, decoder_hidden=32, **kw)


def scvgae_step(data, **loss_kw):
    x, counts, sf, ei, ew = data

    def step(module, epoch):
        return scvgae_loss(module(x, ei, ew), x, counts, sf, **loss_kw)

    return step


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="Unknown device"):
        resolve_device("banana")
    with pytest.raises(ValueError):
        resolve_device("cuda:99")
    with pytest.raises(TypeError):
        resolve_device(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_raises(data):
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        Trainer(make_scvgae(), lr=1e-3, max_epochs=1, device="cuda")


def test_training_reduces_loss(data):
    model = make_scvgae()
    trainer = Trainer(model, lr=5e-3, max_epochs=40, device="cpu", progress_bar=False)
    history = trainer.fit(scvgae_step(data, alpha=0.5))
    assert history["n_epochs"] == 40 and len(history["loss"]) == 40 and history["epoch"] == list(range(40))
    assert {"loss", "recon", "zinb"} <= set(history)
    assert all(isinstance(v, float) for v in history["loss"])
    assert history["loss"][-1] < 0.8 * history["loss"][0]
    assert history["zinb"][-1] < history["zinb"][0] and history["recon"][-1] < history["recon"][0]
    assert not history["stopped_early"] and not history["interrupted"]
    assert trainer.history is history


def _fit_twice(build, step, **trainer_kw):
    results = []
    for _ in range(2):
        model = build()
        history = Trainer(model, device="cpu", progress_bar=False, random_state=3, **trainer_kw).fit(step)
        results.append((model.state_dict(), history))
    return results


@pytest.mark.parametrize("variational", [False, True])
def test_determinism_scvgae(data, variational):
    (s1, h1), (s2, h2) = _fit_twice(
        lambda: make_scvgae(variational=variational), scvgae_step(data), lr=1e-2, max_epochs=5
    )
    assert h1 == h2
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k


def test_determinism_gat(data):
    x, _, sf, ei, _ = data

    def build():
        torch.manual_seed(0)
        return GNNImputeModule(N_GENES, hidden=32, latent=8)

    def step(module, epoch):
        return module.loss(module(x, ei, sf), x * sf[:, None])

    (s1, h1), (s2, h2) = _fit_twice(build, step, lr=1e-2, max_epochs=5, weight_decay=5e-4)
    assert h1 == h2
    for k in s1:
        assert torch.equal(s1[k], s2[k]), k
    assert h1["loss"][-1] < h1["loss"][0]


def test_early_stopping_restores_best(data):
    model = make_scvgae()
    scripted = [5.0, 4.0, 3.0, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 7.0]
    snapshots = []

    def val_step(module):
        snapshots.append({k: v.clone() for k, v in module.state_dict().items()})
        return {"loss": torch.tensor(scripted[len(snapshots) - 1]), "mse": torch.tensor(1.0)}

    trainer = Trainer(model, lr=1e-2, max_epochs=10, device="cpu", progress_bar=False, early_stopping=True, patience=3)
    history = trainer.fit(scvgae_step(data), val_step)
    assert history["monitor"] == "val_loss"
    assert history["best_epoch"] == 3
    assert history["stopped_epoch"] == 6 and history["n_epochs"] == 7 and history["stopped_early"]
    assert history["val_loss"] == scripted[:7] and history["val_mse"] == [1.0] * 7
    state = model.state_dict()
    for k, v in snapshots[3].items():
        assert torch.equal(state[k], v), k
    assert not all(torch.equal(state[k], v) for k, v in snapshots[6].items())


def test_early_stopping_on_train_loss_and_min_delta():
    lin = torch.nn.Linear(1, 1)
    scripted = [1.0, 0.9, 0.89, 0.885, 0.88, 0.2]

    def step(module, epoch):
        return module.weight.sum() * 0 + scripted[epoch]

    trainer = Trainer(lin, lr=1e-3, max_epochs=6, device="cpu", progress_bar=False, early_stopping=True)
    trainer.patience, trainer.min_delta = 2, 0.05
    history = trainer.fit(step)
    assert history["monitor"] == "loss" and history["best_epoch"] == 1 and history["n_epochs"] == 4


def test_minibatch_generator(data):
    x, counts, sf, ei, ew = data
    model = make_scvgae(add_back=True)
    idx_batches = [torch.arange(0, 25), torch.arange(25, 50)]
    calls = []

    def step(module, epoch):
        for idx in idx_batches:
            calls.append(epoch)
            keep = torch.isin(ei[0], idx) & torch.isin(ei[1], idx)
            relabel = torch.full((N_CELLS,), -1)
            relabel[idx] = torch.arange(len(idx))
            out = module(x[idx], relabel[ei[:, keep]], ew[keep], cell_index=idx)
            yield scvgae_loss(out, x[idx], counts[idx], sf[idx])

    trainer = Trainer(model, lr=1e-2, max_epochs=3, device="cpu", progress_bar=False)
    history = trainer.fit(step)
    assert calls == [0, 0, 1, 1, 2, 2]
    assert len(history["loss"]) == 3
    step_count = next(iter(trainer.optimizer.state.values()))["step"]
    assert int(step_count) == 6


def test_bf16_on_cpu(data):
    model = make_scvgae(variational=True)
    trainer = Trainer(model, lr=5e-3, max_epochs=3, device="cpu", progress_bar=False, precision="bf16")
    history = trainer.fit(scvgae_step(data))
    assert all(torch.isfinite(torch.tensor(v)) for v in history["loss"])
    assert all(p.dtype == torch.float32 for p in model.parameters())
    with pytest.raises(ValueError, match="precision"):
        Trainer(model, lr=1e-3, max_epochs=1, device="cpu", precision="fp8")


def test_precision_auto(monkeypatch):
    cpu = torch.device("cpu")
    assert resolve_precision("32", cpu) == "32"
    assert resolve_precision("bf16", cpu) == "bf16"
    assert resolve_precision("auto", cpu) == ("bf16" if fast_bf16(cpu) else "32")
    with pytest.raises(ValueError, match="'auto', '32' or 'bf16'"):
        resolve_precision("16", cpu)
    # "auto" follows the hardware probe, both ways; the Trainer keeps the resolved value
    for probe, expected in ((lambda: True, "bf16"), (lambda: False, "32")):
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", probe, raising=False)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False, raising=False)
        trainer = Trainer(make_scvgae(), lr=1e-3, max_epochs=1, device="cpu", progress_bar=False, precision="auto")
        assert trainer.precision == expected
    assert not fast_bf16(torch.device("meta"))


def test_keyboard_interrupt_restores_best(data):
    model = make_scvgae()
    inner = scvgae_step(data)
    snapshots = []

    def step(module, epoch):
        if epoch == 4:
            raise KeyboardInterrupt
        return inner(module, epoch)

    def val_step(module):
        snapshots.append({k: v.clone() for k, v in module.state_dict().items()})
        return torch.tensor([3.0, 1.0, 2.0, 4.0][len(snapshots) - 1])

    trainer = Trainer(model, lr=1e-2, max_epochs=10, device="cpu", progress_bar=False, early_stopping=True)
    with pytest.raises(KeyboardInterrupt), pytest.warns(RuntimeWarning, match="interrupted after 4 epoch"):
        trainer.fit(step, val_step)
    assert trainer.history["interrupted"] and trainer.history["best_epoch"] == 1
    assert all(torch.equal(model.state_dict()[k], v) for k, v in snapshots[1].items())


def test_nonfinite_loss_raises():
    lin = torch.nn.Linear(1, 1)
    trainer = Trainer(lin, lr=1e-3, max_epochs=3, device="cpu", progress_bar=False)
    with pytest.raises(FloatingPointError, match="epoch 1"):
        trainer.fit(lambda m, e: m.weight.sum() * 0 + [1.0, float("nan"), 1.0][e])


def test_predict_and_progress_bar(data, capsys):
    x, _, _, ei, ew = data
    model = make_scvgae()
    trainer = Trainer(model, lr=1e-3, max_epochs=2, device="cpu", progress_bar=True)
    trainer.fit(scvgae_step(data))
    assert model.training
    out = trainer.predict(lambda m: (m.training, torch.is_grad_enabled(), m(x, ei, ew)["recon"]))
    assert out[0] is False and out[1] is False and not out[2].requires_grad
    assert model.training  # mode restored
    assert "Training" in capsys.readouterr().err
