"""scVGAE behind :func:`scvgae_sc.tl.impute`: AnnData-free arrays in, :class:`ImputeResult` out."""

from __future__ import annotations

from typing import Any

import numpy as np
from scanpy import logging as logg
from scipy import sparse

from ._common import (
    Neighbourhood,
    check_fraction,
    check_positive_int,
    dense_tensor,
    edge_tensors,
    fit_fill_weights,
    gate_factor,
    gated,
    history_arrays,
    progress_enabled,
    resolve_graph,
    size_factors,
    split_batches,
)
from ._impute import ImputeResult

#: Defaults of the method's own options (see :func:`scvgae_options`).
DEFAULTS: dict[str, Any] = {
    "graph": "knn",
    "n_neighbors": 15,
    "n_pcs": 50,
    "percentile": 85,
    "alpha": 0.05,
    "lr": 1e-3,
    "weight_decay": 0.0,
    "hidden": 128,
    "decoder_hidden": 256,
    "decoder_input": "latent",
    "heads": "gcn",
    "variational": False,
    "kl_weight": 1.0,
    "zinb_target": "counts",
    "add_back": True,
    "add_back_init": 1.0,
    "calibrate": True,
    "mask_rate": 0.1,
    "mask_weight": 1.0,
    "output": "fill",
    "fill_scale": "auto",
    "fill_gate": 0.4,
    "fill_hops": 2,
    "graph_fill": True,
    "transform": "auto",
    "batch_mode": "within",
    "batch_size": 512,
    "batching": "auto",
    "precision": "32",
    "progress_bar": None,
}
MAX_EPOCHS = 100
#: Above this many cells ``batching="auto"`` trains on subgraphs: the full-graph encoder run once per batch makes
#: an epoch cost ``n_cells² / batch_size``.
SUBGRAPH_MIN_CELLS = 20_000


def scvgae_options() -> dict[str, Any]:
    """The options of ``tl.impute(method="scvgae", ...)`` and their defaults.

    ``graph`` (``"knn"``)
        Graph built when no ``graph_key`` is given: ``"knn"`` (``n_neighbors`` on ``n_pcs`` PCs, scales
        linearly) or ``"kernel"`` (the paper's linear-kernel graph keeping entries above the
        ``percentile``-th percentile; O(n²)).
    ``alpha`` (0.05)
        Weight of the reconstruction MSE; ``1 - alpha`` weighs the ZINB negative log-likelihood of the raw
        counts (the paper's text: ``α·L_recon + (1 − α)·L_ZINB``; both mean-reduced, so α means what it says).
    ``lr`` (1e-3), ``weight_decay`` (0)
        Adam settings.
    ``hidden`` (128), ``decoder_hidden`` (256)
        Width of the GCN encoder output and of the decoder's hidden layer.
    ``decoder_input`` (``"latent"``)
        Decode the reconstruction from the latent ``Z`` (lean) or from the ZINB mean (``"mean"``, the
        paper's shape; ~10× the decoder cost).
    ``heads`` (``"gcn"``)
        ZINB heads as GCN layers (the paper) or ``"linear"`` maps of ``Z``.
    ``variational`` (False), ``kl_weight`` (1)
        Reparameterized latent with a KL term.
    ``zinb_target`` (``"counts"``)
        What the ZINB likelihood models: the raw ``"counts"`` with per-cell size factors (ours, as DCA and
        scVI), or the ``"normalized"`` input values (what the published code does; kept for the ablation).
    ``add_back`` (True), ``add_back_init`` (1)
        Add the gene-wise and cell-wise standardized input to the decoder output (the paper), each scaled by a
        learnable factor that starts at ``add_back_init`` (the paper's 1). The standardized terms put the raw
        reconstruction on a z-score-like scale, hence ``calibrate``.
    ``calibrate`` (True)
        Map the reconstruction back to the input layer's scale with a per-gene least-squares line fitted on
        the input (``output="recon"`` only): the contract's "same scale as the input layer".
    ``mask_rate`` (0.1), ``mask_weight`` (1)
        Self-supervised masking: each epoch this fraction of the observed non-zeros is hidden from the
        input, and the model is also trained (weight ``mask_weight``) to recover them. Without it, the
        add-back makes the model copy its input and zeros stay zero. ``0`` turns it off.
    ``output`` (``"fill"``)
        ``"fill"``: observed non-zeros are kept and zeros replaced by the decoder's prediction (see ``fill_gate``
        and ``fill_scale``); ``"recon"``: the whole reconstruction, the paper's output, calibrated to the
        input's scale (see ``calibrate``). For a Leiden pipeline on a sqrt or log layer, ``output="recon",
        calibrate=False`` had a higher Leiden ARI than the fill on all four benchmark datasets (pbmc3k Leiden ARI / AMI
        0.705 / 0.795 against 0.672 / 0.787, 3 seeds) and worse on the paper protocol (0.663 / 0.749 against
        0.686 / 0.781); ``benchmarks/results/scvgae_exploration.md``, session 9.
    ``fill_gate`` (0.4)
        With ``output="fill"``: how a zero's fill value depends on its neighbourhood. Where the gene is detected
        in at least this fraction of the cell's graph neighbourhood (itself included), the zero gets the full
        prediction; elsewhere the prediction times (detection rate / ``fill_gate``), down to 0 where no
        neighbour detects it. Predictions are "the value if detected", so filling every zero with them
        erases the zeros that separate cell types (pbmc3k, Leiden ARI 0.41 against 0.70 un-imputed); the gate
        keeps clustering at or above the un-imputed level and costs some accuracy on hidden values
        (``benchmarks/results/scvgae_exploration.md``). ``0`` fills every zero with the full prediction (best
        masked-value recovery).
    ``fill_hops`` (2)
        The neighbourhood of ``fill_gate`` and ``graph_fill``: where a random walk of this many steps on the
        graph can end (1: the cell and its neighbours; 2, as far as the two graph propagations of the model
        reach). On pbmc3k the 2-step rate keeps the clustering scores of the 1-step one and loses less on hidden
        values (``benchmarks/results/scvgae_exploration.md``, session 5).
    ``graph_fill`` (True)
        Where the fill scale is fitted (``fill_scale``), fit it jointly with a weight on the graph's own
        estimate — the mean of the gene's detected values in the ``fill_hops`` neighbourhood — so a zero
        becomes ``w_model · prediction + w_graph · neighbourhood mean`` (gated), both weights non-negative and
        fitted by least squares on freshly hidden observed values. The fitted weights are in
        ``uns[key]["params"]`` (``fill_scale_used``, ``graph_weight_used``): how much the network adds over
        averaging its graph.
    ``fill_scale`` (``"auto"``)
        With ``output="fill"``: ``"fit"`` hides a fresh random ``mask_rate`` of the observed non-zeros after
        training, predicts them, and multiplies the fill values by the least-squares factor from those
        predictions to the hidden values (on the input layer's scale; only observed data are used). It
        corrects the bias of predictions made on a transformed scale (``log1p`` → linear: ``expm1`` of a mean
        of logs underestimates the mean). ``"auto"`` fits when the model works on ``log1p`` of the layer
        (``transform``), ``"none"`` never.
    ``transform`` (``"auto"``)
        The model works on ``log1p`` of a linear layer (``"auto"`` does so for layers made by
        ``pp.normalize(method="total")``, and maps the output back with ``expm1``); ``"none"`` or
        ``"log1p"`` force it.
    ``batch_mode`` (``"within"``)
        With ``tl.impute(batch_key=...)``, how the graph built here (``"knn"`` only) treats batches: neighbours
        only ``"within"`` each cell's batch, or ``"balanced"`` across all batches (see
        :func:`scvgae_sc.pp.cell_graph`). Unused without ``batch_key`` or with a ``graph_key``.
    ``batch_size`` (512)
        Cells per optimizer step: the encoder always propagates over the whole graph, and the heads, decoder
        and losses run on a random batch of cells, so an epoch makes ``n_cells / batch_size`` steps and the
        largest activations scale with the batch. ``None`` trains full-batch (one step per epoch).
    ``batching`` (``"auto"``)
        ``"full"``: every optimizer step runs the encoder over the whole graph (exact; per-epoch time grows as
        ``n_cells² / batch_size``). ``"subgraph"``: each step computes only a random batch of cells — the first
        GCN layer exactly from sparse rows of the normalized graph, the heads' propagation with the latest
        latent of neighbours outside the batch (historical embeddings) — so an epoch costs ``O(n_cells)`` and
        memory is a few dense copies of the data plus the batch; prediction runs in chunks with the exact
        graph. ``"auto"`` picks ``"subgraph"`` when the full-batch memory estimate exceeds the budget
        (``max_memory`` of :func:`~scvgae_sc.tl.impute`) or above 20,000 cells, and logs the choice. Not with
        ``variational=True`` (its extra GCN layers need the whole graph).
    ``precision`` (``"32"``)
        ``"bf16"`` trains under bfloat16 autocast (graph propagations and the losses stay float32), ``"32"`` in
        float32; ``"auto"`` is ``"bf16"`` where the device multiplies bfloat16 natively
        (:func:`scvgae_sc.nn.fast_bf16`: CUDA GPUs that support it, CPUs with AVX-512 BF16 or AMX) and ``"32"``
        elsewhere. The choice is ``params["precision_used"]``. On a 2-core AVX-512 BF16 CPU bf16 took a third
        less CPU time with the same masked-value and paper-protocol scores on four datasets (3 seeds,
        ``benchmarks/results/bf16_all.md``); the Leiden scores moved both ways (pbmc3k up, baron_mouse down on two
        of three seeds), so float32 stays the default.
    ``progress_bar`` (None)
        Show a progress bar (default: at Scanpy verbosity ``info`` or above).
    """
    return dict(DEFAULTS)


def _validate(opts: dict[str, Any]) -> None:
    unknown = set(opts) - set(DEFAULTS)
    if unknown:
        raise TypeError(
            f"Unknown option(s) for method='scvgae': {', '.join(sorted(unknown))}. "
            f"Known: {', '.join(sorted(DEFAULTS))}."
        )
    choices = {
        "graph": ("knn", "kernel"),
        "decoder_input": ("mean", "latent"),
        "heads": ("gcn", "linear"),
        "output": ("fill", "recon"),
        "fill_scale": ("auto", "fit", "none"),
        "transform": ("auto", "none", "log1p"),
        "zinb_target": ("counts", "normalized"),
        "precision": ("auto", "32", "bf16"),
        "batching": ("auto", "full", "subgraph"),
        "batch_mode": ("within", "balanced"),
    }
    check_positive_int("fill_hops", opts["fill_hops"])
    for k in ("variational", "add_back", "calibrate", "graph_fill"):
        if not isinstance(opts[k], bool | np.bool_):
            raise TypeError(f"{k} must be True or False, got {opts[k]!r}.")
    for k, allowed in choices.items():
        if opts[k] not in allowed:
            raise ValueError(f"{k} must be one of {allowed}, got {opts[k]!r}.")
    if opts["batch_size"] is not None:
        check_positive_int("batch_size", opts["batch_size"], minimum=2)
    for k in ("n_neighbors", "hidden", "decoder_hidden"):
        check_positive_int(k, opts[k], minimum=2 if k == "n_neighbors" else 1)
    check_fraction("alpha", opts["alpha"])
    check_fraction("fill_gate", opts["fill_gate"])
    check_fraction("mask_rate", opts["mask_rate"], high=1.0, closed=False)
    for k in ("lr", "weight_decay", "kl_weight", "mask_weight", "add_back_init"):
        v = opts[k]
        if not isinstance(v, int | float) or isinstance(v, bool) or v < 0 or (k == "lr" and v == 0):
            raise ValueError(f"{k} must be a non-negative number{' > 0' if k == 'lr' else ''}, got {v!r}.")


def _calibrate(recon, x):
    """Per-gene least-squares line from ``recon`` to ``x`` (both ``(n_cells, n_genes)``), applied to ``recon``."""
    r_mean, x_mean = recon.mean(0), x.mean(0)
    rc = recon - r_mean
    var = rc.pow(2).mean(0)
    slope = (rc * (x - x_mean)).mean(0) / var.clamp_min(1e-12)
    return rc * slope + x_mean


def _reconstruct(module, x, edge_index, edge_weight, chunk: int):
    """Eval-mode ``(recon, z)`` without gradients; heads and decoder run on ``chunk`` rows at a time.

    The encoder propagates over the whole graph once (``hidden`` channels); the ``n_cells × n_genes``
    intermediates of the heads, the decoder and the add-back exist only per chunk.
    """
    import torch

    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            graph = module.graph_operator(edge_index, edge_weight, x.shape[0])
            z = module.encode_graph(x, graph)["z"]
            h = module.propagate_graph(z, graph) if module.propagate is not None else z
            recon = torch.empty(x.shape, dtype=torch.float32, device=x.device)
            for rows in torch.arange(x.shape[0], device=x.device).split(max(int(chunk), 2)):
                recon[rows] = module.decode(h[rows], z[rows], x[rows], rows)["recon"].float()
    finally:
        module.train(was_training)
    return recon, z.float()


def _layer_values(x, transform: str):
    """The model input ``x`` on the input layer's scale."""
    import torch

    return torch.expm1(x) if transform == "log1p" else x


def _fill(
    recon,
    x,
    observed,
    *,
    transform: str,
    fill_gate: float,
    fill_scale: float,
    graph_weight: float = 0.0,
    rate=None,
    graph_mean=None,
):
    """In place on ``recon``: the ``output="fill"`` matrix on the input layer's scale (see :func:`scvgae_options`).

    ``x`` / ``observed``: the input rows and their non-zeros, whose values are kept (``x=None``: none kept).
    A zero becomes ``(fill_scale · prediction + graph_weight · graph_mean) · min(1, rate / fill_gate)``, with the
    neighbourhood detection ``rate`` and ``graph_mean`` of :class:`~scvgae_sc.tl._common.Neighbourhood` (rows of
    them; each needed only when its option is on).
    """
    recon.clamp_(min=0)
    if transform == "log1p":
        recon.expm1_()
    if fill_scale != 1.0:
        recon.mul_(fill_scale)
    if graph_weight:
        recon.add_(graph_mean, alpha=graph_weight)
    if fill_gate > 0:
        recon.mul_(gate_factor(rate, fill_gate))
    if observed is not None and x is not None:
        recon[observed] = _layer_values(x[observed], transform)
    return recon


def _neighbourhood(graph, x, observed, *, transform: str, fill_gate: float, fill_hops: int, graph_fill: bool):
    """``(rate, graph_mean)`` of the zeros' fill (``None`` where not needed), from the whole input ``x``."""
    if fill_gate <= 0 and not graph_fill:
        return None, None
    hood = Neighbourhood(graph, x.device, fill_hops)
    return hood(_layer_values(x, transform) if graph_fill else None, observed)


def _hide_observed(x, observed_flat, mask_rate: float, gen):
    """``(hidden, x_in)``: a random ``mask_rate`` of the observed entries (flat indices ``observed_flat``) hidden.

    Random numbers are drawn for the observed entries only (a fifth of the matrix on typical data; the CPU
    generator is sequential, so this is what an epoch's mask costs).
    """
    import torch

    pick = observed_flat[torch.rand(observed_flat.shape, generator=gen, device=x.device) < mask_rate]
    hidden = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    hidden.view(-1)[pick] = True
    x_in = x.clone()
    x_in.view(-1)[pick] = 0.0
    return hidden, x_in


def _fit_fill_weights(
    module, x, observed_flat, edge_index, edge_weight, *, mask_rate, gen, chunk, graph, graph_fill: bool, **fill_kwargs
) -> tuple[float, float]:
    """Fill weights ``(fill_scale, graph_weight)`` fitted on freshly hidden observed entries (input layer's scale).

    One more pass with a new random ``mask_rate`` of the observed non-zeros hidden: the non-negative
    least-squares weights that best map the model's fill values for them (and, with ``graph_fill``, the graph's
    neighbourhood mean, computed without them) to their values, which neither saw. Only observed data are used.
    """
    transform, gate, hops = fill_kwargs["transform"], fill_kwargs["fill_gate"], fill_kwargs.pop("fill_hops")
    hidden, x_in = _hide_observed(x, observed_flat, mask_rate, gen)
    visible = x_in > 0
    rate, graph_mean = _neighbourhood(
        graph, x_in, visible, transform=transform, fill_gate=gate, fill_hops=hops, graph_fill=graph_fill
    )
    recon, _ = _reconstruct(module, x_in, edge_index, edge_weight, chunk)
    pred = _fill(recon, None, visible, fill_scale=1.0, rate=rate, **fill_kwargs)[hidden]
    del recon, x_in, visible
    graph_col = gated(graph_mean, rate, gate)[hidden] if graph_fill else None
    return fit_fill_weights(pred, graph_col, _layer_values(x[hidden], transform))


def scvgae_input(X, transform: str):
    """The model input: the input layer ``X`` as float32, ``log1p``-transformed when ``transform`` says so."""
    Xm = sparse.csr_matrix(X, dtype=np.float32) if sparse.issparse(X) else np.asarray(X, dtype=np.float32)
    if transform == "log1p":
        Xm = Xm.log1p() if sparse.issparse(Xm) else np.log1p(Xm)
    return Xm


def predict_scvgae(
    module,
    x,
    edge_index,
    edge_weight,
    *,
    output: str,
    calibrate: bool,
    transform: str,
    fill_gate: float = 0.0,
    fill_scale: float = 1.0,
    fill_hops: int = 1,
    graph_weight: float = 0.0,
    graph: sparse.spmatrix | None = None,
    chunk: int = 512,
    batching: str = "full",
    device=None,
    out: np.ndarray | None = None,
):
    """Imputed matrix and latent (NumPy, float32) from a trained :class:`~scvgae_sc.nn.SCVGAE` and its input ``x``.

    The one prediction path of :func:`run_scvgae` and of saved models (:class:`~scvgae_sc.tl.ImputationModel`).
    ``fill_gate`` and ``graph_weight`` need the cell ``graph`` (see :func:`scvgae_options`); ``fill_scale`` and
    ``graph_weight`` are the fitted weights of the prediction and of the graph's ``fill_hops`` neighbourhood mean
    (the defaults, 1, 0 and 1, are those of models saved before either existed); ``chunk`` rows go through the
    heads and the decoder at a time. ``batching="subgraph"`` predicts chunk by chunk from ``x`` on the host (a
    NumPy array or tensor; ``edge_index`` / ``edge_weight`` unused, ``graph`` needed) into ``out`` when given
    (e.g. a :class:`numpy.memmap`), with the model on ``device``.
    """
    if batching == "subgraph":
        from ._scvgae_subgraph import predict_scvgae_subgraph

        x_np = x.cpu().numpy() if hasattr(x, "cpu") else np.asarray(x, dtype=np.float32)
        kwargs = {"output": output, "calibrate": calibrate, "transform": transform, "fill_gate": fill_gate}
        kwargs.update(fill_scale=fill_scale, fill_hops=fill_hops, graph_weight=graph_weight)
        return predict_scvgae_subgraph(module, x_np, graph, device=device, chunk=chunk, out=out, **kwargs)
    recon, z = _reconstruct(module, x, edge_index, edge_weight, chunk)
    if output == "fill":
        observed = x > 0
        fill = {"transform": transform, "fill_gate": fill_gate}
        rate, graph_mean = _neighbourhood(
            graph, x, observed, fill_hops=fill_hops, graph_fill=bool(graph_weight), **fill
        )
        imputed = _fill(
            recon,
            x,
            observed,
            fill_scale=fill_scale,
            graph_weight=graph_weight,
            rate=rate,
            graph_mean=graph_mean,
            **fill,
        )
        del rate, graph_mean
    else:
        if calibrate:
            recon = _calibrate(recon, x)
        imputed = recon.clamp_(min=0)
        if transform == "log1p":
            imputed.expm1_()
    imputed = imputed.cpu().numpy()
    latent = z.cpu().numpy()
    return np.ascontiguousarray(imputed, dtype=np.float32), np.ascontiguousarray(latent, dtype=np.float32)


def run_scvgae(
    X,
    counts,
    *,
    provided_graph: tuple[sparse.csr_matrix, dict] | None,
    normalization: str | None,
    max_epochs: int | None,
    device: str,
    random_state: int | None,
    out: np.ndarray | None = None,
    batch_labels: np.ndarray | None = None,
    **options: Any,
) -> ImputeResult:
    """Train scVGAE on ``X`` (cells × genes, the input layer) and ``counts``; see :func:`scvgae_options`.

    ``out``: a preallocated float32 array (e.g. a :class:`numpy.memmap`) for the imputed matrix, subgraph mode only.
    ``batch_labels`` (one per cell): the graph built here is built per batch, size factors are per batch.
    """
    opts = {**DEFAULTS, **options}
    _validate(opts)
    n_cells, n_genes = X.shape
    n_epochs = MAX_EPOCHS if max_epochs is None else int(max_epochs)
    if provided_graph is None and opts["graph"] == "knn" and n_cells < opts["n_neighbors"] + 1:
        raise ValueError(
            f"{n_cells} cells are too few for a graph with n_neighbors={opts['n_neighbors']}; "
            "lower n_neighbors (at least n_neighbors + 1 cells are needed)."
        )

    import torch

    from ..nn import SCVGAE, Trainer, rank, resolve_device, scvgae_loss, world_size

    dev = resolve_device(device)
    transform = opts["transform"]
    if transform == "auto":
        transform = "log1p" if normalization == "total" else "none"
    Xm = scvgae_input(X, transform)

    graph_kwargs = (
        {"n_neighbors": opts["n_neighbors"], "n_pcs": opts["n_pcs"]}
        if opts["graph"] == "knn"
        else {"percentile": opts["percentile"]}
    )
    A, graph_info = resolve_graph(
        provided_graph,
        Xm,
        random_state=random_state,
        batch=batch_labels,
        batch_mode=opts["batch_mode"],
        method=opts["graph"],
        **graph_kwargs,
    )

    batching = opts["batching"]
    if batching == "auto":  # tl.impute decides with the memory budget; a direct call decides by size
        batching = "subgraph" if n_cells > SUBGRAPH_MIN_CELLS else "full"
    if batching == "subgraph" and opts["variational"]:
        raise ValueError(
            "variational=True needs the whole graph in every step (its mu / logvar layers propagate again); "
            "use batching='full', or variational=False for subgraph mini-batches."
        )

    if random_state is not None:
        torch.manual_seed(int(random_state))
    module_kwargs = {
        "hidden": opts["hidden"],
        "variational": opts["variational"],
        "decoder_input": opts["decoder_input"],
        "heads": opts["heads"],
        "add_back": opts["add_back"],
        "add_back_init": float(opts["add_back_init"]),
        "decoder_hidden": opts["decoder_hidden"],
        "cached": True,
    }
    model = SCVGAE(n_genes, n_cells, **module_kwargs)
    mask_rate, mask_weight = float(opts["mask_rate"]), float(opts["mask_weight"])
    alpha, kl_weight = float(opts["alpha"]), float(opts["kl_weight"])
    batch_size = n_cells if not opts["batch_size"] else min(int(opts["batch_size"]), n_cells)
    gate = float(opts["fill_gate"]) if opts["output"] == "fill" else 0.0
    chunk = batch_size
    fit_scale = opts["fill_scale"] == "fit" or (opts["fill_scale"] == "auto" and transform == "log1p")
    fit_scale = fit_scale and opts["output"] == "fill" and mask_rate > 0
    graph_fill = bool(opts["graph_fill"]) and fit_scale
    fill_hops = int(opts["fill_hops"])
    trainer = Trainer(
        model,
        lr=float(opts["lr"]),
        weight_decay=float(opts["weight_decay"]),
        max_epochs=n_epochs,
        device=dev,
        progress_bar=progress_enabled(opts["progress_bar"]),
        random_state=random_state,
        precision=opts["precision"],
    )

    start = logg.info(
        f"    training scVGAE on {n_cells} cells × {n_genes} genes, {A.nnz} edges, {dev}, batching={batching!r}"
    )
    if batching == "subgraph":
        from ._scvgae_subgraph import fit_fill_scale_subgraph, subgraph_train_step
        from ._subgraph import SubgraphSampler, gcn_adjacency

        x_host = np.ascontiguousarray(Xm.toarray() if sparse.issparse(Xm) else Xm, dtype=np.float32)
        del Xm
        x_buffer = np.empty_like(x_host)
        counts_csr = sparse.csr_matrix(counts, dtype=np.float32) if opts["zinb_target"] == "counts" else None
        sf_host = size_factors(counts, batch_labels) if counts_csr is not None else None
        sampler = SubgraphSampler(gcn_adjacency(A))
        rng = np.random.default_rng(random_state)

        def loss_fn(out, xb, cb, sfb, hidden_rows):
            cb = xb if cb is None else cb
            return scvgae_loss(
                out, xb, cb, sfb, alpha=alpha, kl_weight=kl_weight, hidden=hidden_rows, hidden_weight=mask_weight
            )

        train_step = subgraph_train_step(
            model,
            sampler,
            x_host,
            x_buffer,
            counts_csr,
            sf_host,
            device=dev,
            batch_size=batch_size,
            mask_rate=mask_rate,
            mask_weight=mask_weight,
            rng=rng,
            loss_fn=loss_fn,
            chunk=chunk,
        )
        history = trainer.fit(train_step)
        del counts_csr
        scale, graph_weight = 1.0, 0.0
        if fit_scale:
            scale, graph_weight = fit_fill_scale_subgraph(
                model,
                x_host,
                x_buffer,
                A,
                sampler,
                device=dev,
                mask_rate=mask_rate,
                rng=rng,
                chunk=chunk,
                transform=transform,
                fill_gate=gate,
                fill_hops=fill_hops,
                graph_fill=graph_fill,
            )
            logg.debug(f"    fill weights fitted on hidden entries: model {scale:.3f}, graph {graph_weight:.3f}")
        del x_buffer, sampler
        x_predict = x_host
    else:
        x = dense_tensor(Xm, dev)
        if opts["zinb_target"] == "counts":
            c = dense_tensor(counts, dev)
            sf = torch.from_numpy(size_factors(counts, batch_labels)).to(dev)
        else:
            c, sf = x, None
        edge_index, edge_weight = edge_tensors(A, dev)
        observed_flat = torch.nonzero(x.reshape(-1) > 0).squeeze(1)  # flat indices of the observed non-zeros
        gen = torch.Generator(device=dev)
        gen.manual_seed(0 if random_state is None else int(random_state))
        n_ranks, this_rank = world_size(), rank()  # data-parallel: each rank trains on its share of the batches

        def batch_loss(module, x_in, hidden, rows):
            out = module(x_in, edge_index, edge_weight, rows=rows)
            xb = x if rows is None else x[rows]
            cb = c if rows is None else c[rows]
            sfb = sf if (sf is None or rows is None) else sf[rows]
            hidden_rows = hidden if (hidden is None or rows is None) else hidden[rows]
            return scvgae_loss(
                out, xb, cb, sfb, alpha=alpha, kl_weight=kl_weight, hidden=hidden_rows, hidden_weight=mask_weight
            )

        def train_step(module, epoch):
            if mask_rate > 0:
                hidden, x_in = _hide_observed(x, observed_flat, mask_rate, gen)
            else:
                hidden, x_in = None, x
            if batch_size >= n_cells and n_ranks == 1:
                return batch_loss(module, x_in, hidden, None)
            order = torch.randperm(n_cells, generator=gen, device=dev)  # the same on every rank
            batches = split_batches(order, batch_size, world_size=n_ranks, rank=this_rank)
            return (batch_loss(module, x_in, hidden, rows) for rows in batches)

        history = trainer.fit(train_step)
        del c, sf
        scale, graph_weight = 1.0, 0.0
        if fit_scale:
            scale, graph_weight = _fit_fill_weights(
                model,
                x,
                observed_flat,
                edge_index,
                edge_weight,
                mask_rate=mask_rate,
                gen=gen,
                chunk=chunk,
                transform=transform,
                fill_gate=gate,
                fill_hops=fill_hops,
                graph=A,
                graph_fill=graph_fill,
            )
            logg.debug(f"    fill weights fitted on hidden entries: model {scale:.3f}, graph {graph_weight:.3f}")
        del observed_flat
        x_predict = x
    predict_kwargs = {
        "output": opts["output"],
        "calibrate": bool(opts["calibrate"]),
        "transform": transform,
        "fill_gate": gate,
        "fill_scale": float(scale),
        "fill_hops": fill_hops,
        "graph_weight": float(graph_weight),
        "chunk": int(chunk),
        "batching": batching,
    }
    if batching == "subgraph":
        imputed, latent = predict_scvgae(model, x_predict, None, None, graph=A, device=dev, out=out, **predict_kwargs)
    else:
        imputed, latent = predict_scvgae(model, x_predict, edge_index, edge_weight, graph=A, **predict_kwargs)
        if out is not None:
            out[...] = imputed
            imputed = out
    logg.debug("    finished training", time=start)

    params = {k: v for k, v in opts.items() if k not in ("progress_bar",)}
    params.update(transform_used=transform, max_epochs_used=n_epochs, fill_scale_used=float(scale))
    params["graph_weight_used"] = float(graph_weight)
    params["batching_used"] = batching
    params["precision_used"] = trainer.precision
    return ImputeResult(
        imputed=imputed if out is not None else np.ascontiguousarray(imputed, dtype=np.float32),
        latent=np.ascontiguousarray(latent, dtype=np.float32),
        history=history_arrays(history),
        params=params,
        graph=sparse.csr_matrix(A, dtype=np.float32),
        graph_info=graph_info,
        device=str(dev),
        model_state={
            "module": model,
            "module_kwargs": {"n_genes": n_genes, "n_cells": n_cells, **module_kwargs},
            "predict_kwargs": predict_kwargs,
        },
    )
