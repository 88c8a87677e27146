"""Probe (session 6): can a network improve on the graph's own estimate of a hidden value?

The estimate is the mean of the gene's detected values over a 2-step walk on the 15-NN graph (scVGAE's
``graph_fill`` term; alone it is the ``knn_fill_2step`` baseline). Here a GCN encoder (128, GraphNorm, ReLU) and a
decoder (256) predict a multiplicative correction of it, ``pred = mean · exp(c)`` (``mode=add``: ``mean + c``),
trained with linear-scale MSE on the observed values hidden from the input each epoch (10 %), under bf16 autocast.
The benchmark's masked entries (``pp.mask_dropouts``, seed = ``seed``) are scored every 5 epochs.

    PYTHONPATH=. SCVGAE_SC_DATA=/work/shared/data python benchmarks/explore_residual.py epochs=30 lr=1e-3 own=0

``key=value`` arguments override the settings in ``cfg`` (``own=1`` adds a path from the cell's own profile).
Findings: ``results/scvgae_exploration.md``, "Session 6".
"""

import json
import os
import sys
import time

import numpy as np
import scanpy as sc
import torch
from scipy import sparse
from torch import nn
from torch_geometric.nn import GCNConv, GraphNorm

import scvgae_sc as sv
from scvgae_sc.tl._common import Neighbourhood, edge_tensors, resolve_graph

torch.set_num_threads(1)
cfg = {"seed": 0, "epochs": 60, "lr": 2e-3, "hidden": 128, "dec": 256, "mode": "mult", "dataset": "pbmc3k"}
cfg.update(hops=2, bs=512, wd=0.0, own=1)
for a in sys.argv[1:]:
    k, v = a.split("=")
    cfg[k] = type(cfg[k])(v) if not isinstance(cfg[k], str) else v
seed = cfg["seed"]
ad = (
    sc.read_h5ad(os.path.join(os.environ.get("SCVGAE_SC_DATA", "../shared/data"), cfg["dataset"] + ".h5ad"))
    if cfg["dataset"] != "pbmc68k"
    else sv.datasets.pbmc68k()
)
sv.pp.filter(ad)
sv.pp.normalize(ad, method="total", key_added="total")
sv.pp.mask_dropouts(ad, layer="total", random_state=seed)
X = ad.layers["masked"]
X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
truth = ad.layers["total"]
truth = truth.toarray() if hasattr(truth, "toarray") else np.asarray(truth)
M = ad.layers["masked_mask"]
M = M.toarray() if hasattr(M, "toarray") else np.asarray(M)
M = M.astype(bool)
Xl = np.log1p(X).astype(np.float32)

A, _ = resolve_graph(None, sparse.csr_matrix(Xl), random_state=seed, method="knn", n_neighbors=15, n_pcs=50)
dev = torch.device("cpu")
nb = Neighbourhood(A, dev, hops=cfg["hops"])
x = torch.from_numpy(X.astype(np.float32))
obs = x > 0
ei, ew = edge_tensors(A, dev)
torch.manual_seed(seed)
n, g = x.shape


def score(pred):
    p = pred[M]
    t = truth[M]
    return {"pearson": float(np.corrcoef(p, t)[0, 1]), "mse": float(np.mean((p - t) ** 2))}


rate0, gm0 = nb(x, obs)
print("graph mean only", score(gm0.numpy()), flush=True)


class Net(nn.Module):
    def __init__(s):
        super().__init__()
        s.gcn = GCNConv(g, cfg["hidden"])
        s.norm = GraphNorm(cfg["hidden"])
        s.drop = nn.Dropout(0.1)
        s.dec = nn.Sequential(
            nn.Linear(cfg["hidden"] + (cfg["hidden"] if cfg["own"] else 0), cfg["dec"]),
            nn.ReLU(),
            nn.Linear(cfg["dec"], g),
        )
        s.own = nn.Linear(g, cfg["hidden"]) if cfg["own"] else None
        s.bias = nn.Parameter(torch.zeros(g))

    def forward(s, xl, rows):
        z = s.drop(torch.relu(s.norm(s.gcn(xl, ei, ew))))
        h = z[rows]
        if s.own is not None:
            h = torch.cat([h, torch.relu(s.own(xl[rows]))], 1)
        return s.dec(h) + s.bias


net = Net()
opt = torch.optim.Adam(net.parameters(), lr=cfg["lr"], weight_decay=cfg["wd"])
gen = torch.Generator().manual_seed(seed)
t0 = time.process_time()
for ep in range(cfg["epochs"]):
    net.train()
    hidden = obs & (torch.rand(x.shape, generator=gen) < 0.1)
    x_in = x.masked_fill(hidden, 0.0)
    with torch.no_grad():
        rate, gm = nb(x_in, x_in > 0)
    xl = torch.log1p(x_in)
    order = torch.randperm(n, generator=gen)
    tot = 0
    base = 0
    for rows in order.split(cfg["bs"]):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            c = net(xl, rows).float()
        if cfg["mode"] == "mult":
            pred = gm[rows] * torch.exp(c.clamp(-5, 5))
        else:
            pred = gm[rows] + c
        hr = hidden[rows]
        loss = (pred - x[rows]).pow(2)[hr].mean()
        base += float((gm[rows] - x[rows]).pow(2)[hr].mean())
        opt.zero_grad()
        loss.backward()
        opt.step()
        tot += float(loss)
    if ep % 5 == 0 or ep == cfg["epochs"] - 1:
        net.eval()
        with torch.no_grad():
            c = net(torch.log1p(x), torch.arange(n)).float()
            pe = gm0 * torch.exp(c.clamp(-5, 5)) if cfg["mode"] == "mult" else gm0 + c
        print(ep, round(tot, 2), round(base, 2), score(pe.numpy()), flush=True)
net.eval()
with torch.no_grad():
    rows = torch.arange(n)
    c = net(torch.log1p(x), rows).float()
    pred = gm0 * torch.exp(c.clamp(-5, 5)) if cfg["mode"] == "mult" else gm0 + c
print("cpu", time.process_time() - t0)
res = score(pred.numpy())
print("residual", res)
print(json.dumps({**cfg, **res}))
