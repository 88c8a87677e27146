"""One process of the data-parallel tests (``tests/nn/test_distributed.py``), started by ``torchrun``.

``python -m torch.distributed.run --nproc-per-node=2 ... tests/nn/_ddp_worker.py OUT_DIR`` runs, on each rank,

* Trainer-level training of a small SCVGAE without dropout on a fixed sequence of batches, each rank taking
  its share (rank ``r`` the batches ``r, r + world, ...`` of each epoch), through the module's ``forward`` and
  through its pieces (``encoder_input`` / ``latent_from_input`` / ``decode``), and with gradient accumulation;
* ``tl.impute`` on pbmc68k: scVGAE with ``batching="full"`` and ``"subgraph"``, and GNNImpute,

and saves what each rank got under ``OUT_DIR``. The test imports this file for the single-process reference
(:func:`train`, :func:`impute_all`).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch

N_CELLS, N_GENES, BATCH, EPOCHS = 64, 20, 8, 3
LR = 1e-2
#: (variant, accumulate_grad_batches on each rank): k = 3 on 4 batches per rank and epoch also takes the path of an
#: epoch's incomplete last group (its gradients all-reduced outside DDP's backward).
TRAINER_RUNS = (("forward", 1), ("pieces", 1), ("forward", 3))
IMPUTE_KW = {"max_epochs": 2, "progress_bar": False, "random_state": 0, "device": "cpu"}
SCVGAE_KW = {"batch_size": 128, "hidden": 16, "decoder_hidden": 32}
GNNIMPUTE_KW = {"hidden": 32, "latent": 8, "batch_size": 128}
IMPUTE_RUNS = ("full", "subgraph", "unseeded", "gnnimpute", "gnnimpute_subgraph", "denoised")


def make_data() -> dict[str, torch.Tensor]:
    """Seeded counts, normalized input, size factors and a kNN-like graph (explicit generators only)."""
    g = torch.Generator().manual_seed(1)
    counts = torch.poisson(torch.rand(N_CELLS, N_GENES, generator=g) * 4, generator=g)
    sf = counts.sum(1) / counts.sum(1).median()
    x = torch.sqrt(torch.log1p(counts))
    src = torch.arange(N_CELLS).repeat_interleave(3)
    dst = torch.randint(0, N_CELLS, (3 * N_CELLS,), generator=g)
    ei = torch.unique(torch.cat([torch.stack([src, dst]), torch.stack([dst, src])], dim=1), dim=1)
    ew = torch.rand(ei.shape[1], generator=g) + 0.5
    # the first GCN layer's propagated input for the "pieces" steps: dense Â x, Â = D^-1/2 (A + I) D^-1/2
    A = torch.zeros(N_CELLS, N_CELLS)
    A[ei[1], ei[0]] = ew
    A += torch.eye(N_CELLS)
    d = A.sum(1).rsqrt()
    ax = (d[:, None] * A * d[None, :]) @ x
    return {"counts": counts, "sf": sf, "x": x, "ei": ei, "ew": ew, "ax": ax}


def epoch_batches(epoch: int) -> tuple[torch.Tensor, ...]:
    """The epoch's batches in order (the same on every rank)."""
    order = torch.randperm(N_CELLS, generator=torch.Generator().manual_seed(100 + epoch))
    return order.split(BATCH)


def train(variant: str, *, world: int, rank: int, accumulate: int) -> tuple[dict[str, torch.Tensor], dict]:
    """Train from the same initial weights; return ``(state_dict, history)``."""
    from scvgae_sc.nn import SCVGAE, Trainer, scvgae_loss

    data = make_data()
    x, counts, sf = data["x"], data["counts"], data["sf"]
    torch.manual_seed(0)
    heads = "gcn" if variant == "forward" else "linear"
    model = SCVGAE(N_GENES, N_CELLS, hidden=8, decoder_hidden=16, heads=heads, dropout_encoder=0, dropout_decoder=0)

    def train_step(module, epoch):
        for rows in epoch_batches(epoch)[rank::world]:
            if variant == "forward":
                out = module(x, data["ei"], data["ew"], rows=rows)
            else:
                z = module.latent_from_input(module.encoder_input(data["ax"][rows]))
                out = module.decode(z, z, x[rows], rows)
            yield scvgae_loss(out, x[rows], counts[rows], sf[rows], alpha=0.5)

    trainer = Trainer(
        model, lr=LR, max_epochs=EPOCHS, device="cpu", progress_bar=False, accumulate_grad_batches=accumulate
    )
    history = trainer.fit(train_step)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}, history


def prepared_pbmc68k():
    """pbmc68k filtered, with ``total`` / ``normalized`` layers and a 15-NN graph."""
    import scvgae_sc as sv

    adata = sv.datasets.pbmc68k()
    sv.pp.filter(adata)
    sv.pp.normalize(adata, method="total", key_added="total")
    sv.pp.normalize(adata)
    sv.pp.cell_graph(adata)
    return adata


def impute_all(adata, runs: tuple[str, ...] = IMPUTE_RUNS) -> dict[str, np.ndarray]:
    """``tl.impute`` runs; their layers, latents, histories and world sizes as a flat dict of arrays.

    ``"full"`` / ``"subgraph"``: scVGAE with that batching; ``"unseeded"``: scVGAE on subgraphs with
    ``random_state=None`` and its own graph (ranks must still agree); ``"gnnimpute"`` (full batch),
    ``"gnnimpute_subgraph"`` and ``"denoised"`` (scVGAE on subgraphs, ``output="denoised"``).
    """
    import scvgae_sc as sv

    out = {}
    for name in runs:
        if name.startswith("gnnimpute"):
            kw = {**IMPUTE_KW, **GNNIMPUTE_KW, "batching": "subgraph" if name.endswith("subgraph") else "full"}
            sv.tl.impute(adata, method="gnnimpute", layer="total", key_added=name, **kw)
        elif name == "denoised":
            kw = {**IMPUTE_KW, **SCVGAE_KW, "batching": "subgraph", "output": "denoised"}
            sv.tl.impute(adata, method="scvgae", graph_key="cell_graph", key_added=name, **kw)
        elif name == "unseeded":
            kw = {**IMPUTE_KW, **SCVGAE_KW, "batching": "subgraph", "random_state": None}
            sv.tl.impute(adata, method="scvgae", key_added=name, **kw)
        else:
            kw = {**IMPUTE_KW, **SCVGAE_KW, "batching": name}
            sv.tl.impute(adata, method="scvgae", graph_key="cell_graph", key_added=name, **kw)
        out[f"{name}/layer"] = np.asarray(adata.layers[name])
        out[f"{name}/latent"] = np.asarray(adata.obsm[f"X_{name}"])
        out[f"{name}/world_size"] = np.asarray(adata.uns[name]["params"]["world_size"])
        for k, v in adata.uns[name]["history"].items():
            out[f"{name}/history/{k}"] = np.asarray(v)
    return out


def main(out_dir: str) -> None:
    """Run everything on this rank (the process group comes from torchrun's environment)."""
    import scanpy as sc

    from scvgae_sc.nn import init_from_env, rank, world_size

    torch.set_num_threads(1)
    sc.settings.verbosity = 0
    init_from_env("cpu")
    r, w = rank(), world_size()
    out = Path(out_dir)
    t0 = time.perf_counter()
    for variant, k in TRAINER_RUNS:
        state, history = train(variant, world=w, rank=r, accumulate=k)
        torch.save({"state": state, "loss": history["loss"]}, out / f"trainer_{variant}_k{k}_rank{r}.pt")
    t1 = time.perf_counter()
    adata = prepared_pbmc68k()
    results = impute_all(adata)
    import scvgae_sc as sv

    try:
        sv.tl.impute(adata, method="scvgae", key_added="file", filename=out / f"file{r}.npy", **IMPUTE_KW)
    except ValueError as err:
        results["filename_refused"] = np.asarray("processes" in str(err))
    else:
        results["filename_refused"] = np.asarray(False)
    np.savez(out / f"impute_rank{r}.npz", **results)
    print(f"rank {r}/{w}: trainer {t1 - t0:.1f} s, impute {time.perf_counter() - t1:.1f} s", flush=True)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
