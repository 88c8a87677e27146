"""The dense matrix products of one scVGAE training step at the default shape, timed alone.

A floor for the default run's time on this machine: every step of an epoch (``n_cells / batch_size`` of them)
runs these products whatever the elementwise work around them costs. Writes
``benchmarks/results/matmul_floor.{json,md}``::

    python benchmarks/matmul_floor.py                      # pbmc3k's filtered shape, 2 threads
    python benchmarks/matmul_floor.py --cells 2024 --genes 3857 --threads 2 --repeats 30
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch


def products(n_cells: int, n_genes: int, batch: int, hidden: int, dec_hidden: int, dtype) -> dict:
    """``name -> (callable, GFLOP)`` for the products of one step (forward and backward)."""
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    x, w_enc, g_enc = r(n_cells, n_genes), r(hidden, n_genes), r(n_cells, hidden)
    h, w_heads, b_heads, g_heads = r(batch, hidden), r(3 * n_genes, hidden), r(3 * n_genes), r(batch, 3 * n_genes)
    d1, w_dec, b_dec, g_dec = r(batch, dec_hidden), r(n_genes, dec_hidden), r(n_genes), r(batch, n_genes)
    w_dec1, g_dec1 = r(dec_hidden, hidden), r(batch, dec_hidden)
    gf = 1e-9 * 2
    return {
        "encoder X W": (lambda: x @ w_enc.T, gf * n_cells * n_genes * hidden),
        "encoder dW": (lambda: g_enc.T @ x, gf * n_cells * n_genes * hidden),
        "heads forward (with bias)": (lambda: torch.addmm(b_heads, h, w_heads.T), gf * batch * hidden * 3 * n_genes),
        "heads dW": (lambda: g_heads.T @ h, gf * batch * hidden * 3 * n_genes),
        "heads dh": (lambda: g_heads @ w_heads, gf * batch * hidden * 3 * n_genes),
        "decoder layer 1 (fwd, dW, dh)": (
            lambda: (h @ w_dec1.T, g_dec1.T @ h, g_dec1 @ w_dec1),
            3 * gf * batch * hidden * dec_hidden,
        ),
        "decoder layer 2 forward": (lambda: torch.addmm(b_dec, d1, w_dec.T), gf * batch * dec_hidden * n_genes),
        "decoder layer 2 dW": (lambda: g_dec.T @ d1, gf * batch * dec_hidden * n_genes),
        "decoder layer 2 dh": (lambda: g_dec @ w_dec, gf * batch * dec_hidden * n_genes),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cells", type=int, default=2024)
    p.add_argument("--genes", type=int, default=3857)
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--decoder-hidden", type=int, default=256)
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--name", default="matmul_floor")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    steps = -(-a.cells // a.batch)
    rows, out = [], {"args": vars(a), "machine": platform.platform(), "torch": torch.__version__, "dtypes": {}}
    for dtype in (torch.float32, torch.bfloat16):
        total_ms, rec = 0.0, {}
        for name, (fn, gflop) in products(a.cells, a.genes, a.batch, a.hidden, a.decoder_hidden, dtype).items():
            for _ in range(3):
                fn()
            ts = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            ms = 1000 * float(np.median(ts))
            total_ms += ms
            rec[name] = {"ms": ms, "gflop": gflop, "gflop_s": gflop / ms * 1000}
            rows.append(f"| {str(dtype).split('.')[-1]} | {name} | {ms:.1f} | {gflop / ms * 1000:.0f} |")
        floor_s = total_ms / 1000 * steps * a.epochs
        out["dtypes"][str(dtype)] = {"products": rec, "step_ms": total_ms, "run_floor_s": floor_s}
        rows.append(
            f"| {str(dtype).split('.')[-1]} | **one step** | **{total_ms:.1f}** | × {steps} steps × {a.epochs} "
            f"epochs = **{floor_s:.1f} s** |"
        )
    res = Path(__file__).parent / "results"
    res.mkdir(exist_ok=True)
    (res / f"{a.name}.json").write_text(json.dumps(out, indent=1))
    md = [
        f"# Dense products of one scVGAE training step (`{a.name}`)",
        "",
        f"Command: `python benchmarks/matmul_floor.py --cells {a.cells} --genes {a.genes} --batch {a.batch} "
        f"--threads {a.threads} --repeats {a.repeats} --name {a.name}`; {platform.platform()}, torch "
        f"{torch.__version__}, {a.threads} threads; median of {a.repeats} calls each.",
        "",
        "| dtype | product | ms | GFLOP/s |",
        "| --- | --- | --- | --- |",
        *rows,
        "",
    ]
    (res / f"{a.name}.md").write_text("\n".join(md))
    print("\n".join(md))


if __name__ == "__main__":
    main()
