"""Both methods on a GPU at growing sizes: time per epoch and peak GPU / host memory, in one short call.

    python benchmarks/gpu_check.py                 # device="cuda": pbmc3k, 100k and 1M simulated cells x 2,000 genes
    python benchmarks/gpu_check.py --quick         # CPU, tiny sizes, 1 epoch (what the tests run)

Every (method, size) job runs ``tl.impute`` for ``--epochs`` epochs (default 5) on the default denoised output
and records the wall seconds per epoch, the peak GPU memory (``torch.cuda.max_memory_allocated``) and the peak
resident host memory of this process. A run the memory guard refuses is recorded with the guard's message (it
names the estimate), a run that fails otherwise with its error; the sizes after a refusal still run. Sizes are
skipped once ``--budget`` seconds have passed, so the whole call stays inside one device-tool call. Results go to
``results/<name>.json`` and ``.md`` (``--name``, default ``gpu_check``; ``--quick`` writes ``gpu_check_quick``).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
SIZES = {"pbmc3k": None, "sim100k": (100_000, 2000), "sim1M": (1_000_000, 2000)}
QUICK_SIZES = {"pbmc68k": None, "sim2k": (2000, 200)}


def _data(name: str, shape):
    import scvgae_sc as sv

    if shape is None:
        if name == "pbmc68k":
            adata = sv.datasets.pbmc68k()
        else:
            import bench

            adata = bench.load(name)
        sv.pp.filter(adata)
    else:
        adata = sv.datasets.simulate(*shape, random_state=0)
    sv.pp.normalize(adata)  # scVGAE's layer
    sv.pp.normalize(adata, method="total", key_added="total")  # GNNImpute's
    return adata


def run_one(adata, method: str, device: str, epochs: int) -> dict:
    """One ``tl.impute`` run; its time per epoch and peak memory, or the refusal / error."""
    import torch

    import scvgae_sc as sv

    layer = "normalized" if method == "scvgae" else "total"
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    rec: dict = {"method": method, "n_obs": adata.n_obs, "n_vars": adata.n_vars, "device": device}
    try:
        sv.tl.impute(adata, method=method, layer=layer, device=device, max_epochs=epochs, progress_bar=False)
    except (MemoryError, ValueError, RuntimeError) as err:
        rec.update(error=f"{type(err).__name__}: {err}"[:600], seconds=time.perf_counter() - t0)
        return rec
    seconds = time.perf_counter() - t0
    n_epochs = len(adata.uns[method]["history"]["loss"])
    rec.update(seconds=seconds, epochs=n_epochs, seconds_per_epoch=seconds / max(n_epochs, 1))
    rec["batching"] = adata.uns[method]["params"].get("batching_used")
    if device.startswith("cuda"):
        rec["gpu_peak_gb"] = torch.cuda.max_memory_allocated() / 1e9
    rec["host_peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    return rec


def markdown(records: list[dict], command: str) -> str:
    lines = [
        f"# GPU check\n\nCommand: `{command}`\n",
        "| method | cells × genes | device | batching | s / epoch | GPU peak GB | host peak GB | result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]

    def cell(r: dict, k: str, fmt: str = ".2f") -> str:
        return format(r[k], fmt) if r.get(k) is not None else "–"

    for r in records:
        lines.append(
            f"| {r['method']} | {r['n_obs']} × {r['n_vars']} | {r['device']} | {r.get('batching', '–')} | "
            f"{cell(r, 'seconds_per_epoch')} | {cell(r, 'gpu_peak_gb')} | {cell(r, 'host_peak_gb')} | "
            f"{r.get('error', 'ok')} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="CPU, tiny sizes, 1 epoch")
    p.add_argument("--device", default=None, help="default cuda (cpu with --quick)")
    p.add_argument("--epochs", type=int, default=None, help="epochs per run (default 5; 1 with --quick)")
    p.add_argument("--budget", type=float, default=540.0, help="seconds after which remaining sizes are skipped")
    p.add_argument("--name", default=None)
    p.add_argument("--out", type=Path, default=RESULTS, help="folder for the results (default benchmarks/results)")
    a = p.parse_args(argv)
    sys.path.insert(0, str(HERE))
    device = a.device or ("cpu" if a.quick else "cuda")
    epochs = a.epochs or (1 if a.quick else 5)
    sizes = QUICK_SIZES if a.quick else SIZES
    name = a.name or ("gpu_check_quick" if a.quick else "gpu_check")
    command = "python benchmarks/gpu_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    start, records = time.perf_counter(), []
    for size, shape in sizes.items():
        if time.perf_counter() - start > a.budget:
            records.append(
                {"method": "both", "n_obs": size, "n_vars": "", "device": device, "error": "skipped: budget"}
            )
            continue
        adata = _data(size, shape)
        for method in ("scvgae", "gnnimpute"):
            rec = run_one(adata, method, device, epochs)
            rec["dataset"] = size
            records.append(rec)
            print(json.dumps(rec), flush=True)
        del adata
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / f"{name}.json").write_text(json.dumps({"command": command.strip(), "records": records}, indent=1))
    (a.out / f"{name}.md").write_text(markdown(records, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
