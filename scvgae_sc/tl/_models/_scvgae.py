"""scVGAE (:class:`SCVGAEModel`): the AnnData-free training and prediction of ``tl.impute(method="scvgae")``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from scanpy import logging as logg
from scipy import sparse

from .._common import FillWeightFit, evaluating, gated, history_arrays, progress_enabled, resolve_graph, size_factors
from .._output import Evidence, add_fill_rows, finish_all_cells, finish_rows
from ._base import ImputationModel, ImputeResult
from ._options import SCVGAE_AUTO_TRAINING, SCVGAEOptions
from ._plans import LayerMolecules, SCVGAEPlan
from ._scvgae_samplers import SCVGAESampler, scvgae_sampler

if TYPE_CHECKING:
    from anndata import AnnData

#: Defaults of the method's own options (see :func:`scvgae_options`).
DEFAULTS: dict[str, Any] = SCVGAEOptions.defaults()
MAX_EPOCHS = 100  # the published objective's; see SCVGAE_AUTO_TRAINING
#: Above this many cells ``batching="auto"`` trains on subgraphs: the full-graph encoder run once per batch makes
#: an epoch cost ``n_cells² / batch_size``.
SUBGRAPH_MIN_CELLS = 20_000
#: ``objective="molecules"``: the share of each count's molecules the network reads.
MOLECULE_FRACTION = 0.5
#: Input layers whose normalization the molecules objective can repeat on a part of the counts.
MOLECULE_LAYERS = ("sqrt", "log1p", "total")


def scvgae_options() -> dict[str, Any]:
    r"""The options of ``tl.impute(method="scvgae", ...)`` and their defaults.

    ``graph`` (``"knn"``)
        Graph built when no ``graph_key`` is given: ``"knn"`` (``n_neighbors`` on ``n_pcs`` PCs, scales
        linearly) or ``"kernel"`` (the paper's linear-kernel graph keeping entries above the
        ``percentile``-th percentile; O(n²)).
    ``objective`` (``"auto"``)
        What the count model is trained to predict. ``"reconstruct"`` (the published objective): the cell's own
        counts, from an input made of those counts (with ``mask_rate`` hiding some of them). ``"molecules"``: each
        epoch every count is split binomially in two halves of its molecules; the network reads one half,
        normalized as the input layer (as :func:`~scvgae_sc.pp.normalize` made it, at the layer's row target), and
        the ZINB likelihood scores the other half (size factors halved). The halves are independent samples of the
        same expression, so the model cannot gain by copying its input: it learns what the cell's neighbourhood and
        the genes' co-expression say about molecules it has not read (Noise2Self for counts). Prediction reads the
        whole input layer. It needs ``zinb_target="counts"``, ``mask_rate=0`` and an input layer written by
        ``pp.normalize``. ``"auto"``: ``"molecules"`` for ``output="denoised"`` where it can run, ``"reconstruct"``
        elsewhere (``objective_used`` in ``uns[key]["params"]``). On molecular cross-validation the denoised
        output scored 0.0500, 0.1053, 0.0600 and 0.0626 on pbmc3k, pbmc68k, bladder and baron_mouse (seeds 0–2,
        40 epochs) against 0.0504, 0.1096, 0.0598 and 0.0623 with the reconstruction objective and 50 epochs; at
        40 epochs the reconstruction objective scored 0.0502 on pbmc3k (the same), 0.1072 on pbmc68k (0.1050 with
        molecules) and 0.0624 on baron_mouse (0.0627; seed 0); see the Benchmarks page of the documentation. Fresh
        splits each epoch let the model see every molecule over many epochs, so it starts to fit the counts again
        after about 50 epochs (pbmc3k, seed 0: 0.0503 after 30 epochs, 0.0502 after 40 and 50, 0.0505 after 70;
        pbmc68k 0.1050 after 40, 0.1056 after 50; baron_mouse 0.0627 after 40, 0.0626 after 50): the default trains
        40 epochs. One fixed split for all epochs scored 0.0518.
    ``alpha`` (``"auto"``)
        Weight of the reconstruction MSE; ``1 - alpha`` weighs the ZINB negative log-likelihood of the raw
        counts (the paper's text: ``α·L_recon + (1 − α)·L_ZINB``; both mean-reduced, so α means what it says).
        ``"auto"``, like ``lr``, ``mask_rate`` and ``tl.impute(max_epochs=None)``, takes the setting chosen for the
        ``output``: with ``"denoised"`` only the count model is trained (``alpha=0``, ``mask_rate=0``,
        ``lr=3e-3``, 40 epochs, see ``objective``); with
        ``"fill"`` or ``"recon"`` the published objective (``alpha=0.05``, ``mask_rate=0.1``, ``lr=1e-3``,
        100 epochs). The values used are in ``uns[key]["params"]`` (``alpha_used``, ``lr_used``,
        ``mask_rate_used``, ``max_epochs_used``).
    ``lr`` (``"auto"``), ``weight_decay`` (0)
        Adam settings.
    ``hidden`` (128), ``decoder_hidden`` (256)
        Width of the GCN encoder output and of the decoder's hidden layer.
    ``decoder_input`` (``"latent"``)
        Decode the reconstruction from the latent ``Z`` (lean) or from the ZINB mean (``"mean"``, the
        paper's shape; ~10× the decoder cost).
    ``heads`` (``"auto"``)
        ZINB heads as GCN layers (``"gcn"``, the paper; one more graph step) or ``"linear"`` maps of ``Z``.
        ``"auto"``: ``"linear"`` for ``output="denoised"`` (its estimate scored better without the extra graph
        step), ``"gcn"`` otherwise (``heads_used`` in ``uns[key]["params"]``).
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
        the input (``output="recon"`` only), so that the output has the scale of the input layer.
    ``mask_rate`` (``"auto"``), ``mask_weight`` (1)
        Self-supervised masking: each epoch this fraction of the observed non-zeros is hidden from the
        input, and the model is also trained (weight ``mask_weight``) to recover them. Without it, the
        add-back makes the model copy its input and zeros stay zero. ``0`` turns it off.
    ``output`` (``"denoised"``)
        ``"fill"``: observed non-zeros are kept and zeros replaced by the decoder's prediction (see ``fill_gate``
        and ``fill_scale``); ``"recon"``: the whole reconstruction, the paper's output, calibrated to the
        input's scale (see ``calibrate``). For a Leiden pipeline on a sqrt or log layer, ``output="recon",
        calibrate=False`` had a higher Leiden ARI than the fill on all four benchmark datasets (pbmc3k Leiden ARI / AMI
        0.705 / 0.795 against 0.672 / 0.787, 3 seeds) and worse on the paper protocol (0.663 / 0.749 against
        0.686 / 0.781); see the Benchmarks page of the documentation. ``"denoised"`` (the default): every entry is the
        count model's estimate of the cell's expression — the expected ``log1p``-normalized value of a Poisson
        count with mean ``(1 − π) · M`` at the median library, :math:`E[\log(1 + Y)]`, written on the input
        layer's scale, where ``M`` is by default the model's posterior given the cell's own counts (see
        ``posterior``). It is the output to use for gene-level analyses on log values; it scores best under
        molecular cross-validation (:func:`~scvgae_sc.tl.score_denoising`, see the Benchmarks page of the
        documentation). The input layer must come from :func:`~scvgae_sc.pp.normalize`; the decoder, ``calibrate``
        and the fill options are not used. ``"fill"`` is the output of the masked-recovery protocol.
    ``posterior`` (True)
        With ``output="denoised"``: combine the count model with each cell's own counts. The ZINB heads are the
        prior (mean ``M``, dispersion ``θ``, dropout ``π``) and the output uses the posterior mean of the cell's
        expression: a detected count gives :math:`(\theta + y) / (\theta / M + s)` (``s`` the size factor), a
        zero weighs "dropout" (the prior mean) against "not expressed" by their likelihoods. Genes with little
        variation between similar cells keep the model's mean; the others follow the cell's counts. On pbmc3k it
        lowered the molecular cross-validation loss by 4 % (0.0524 → 0.0502, seed 0; see the Benchmarks page);
        ``False`` gives the count model's mean alone. Needs ``zinb_target="counts"``; predicting with a saved model
        then needs the counts layer it was trained with.
    ``fill_gate`` (0.4)
        With ``output="fill"``: how a zero's fill value depends on its neighbourhood. Where the gene is detected
        in at least this fraction of the cell's graph neighbourhood (itself included), the zero gets the full
        prediction; elsewhere the prediction times (detection rate / ``fill_gate``), down to 0 where no
        neighbour detects it. Predictions are "the value if detected", so filling every zero with them
        erases the zeros that separate cell types (pbmc3k, Leiden ARI 0.41 against 0.70 un-imputed); the gate
        keeps clustering at or above the un-imputed level and costs some accuracy on hidden values
        (see the Benchmarks page of the documentation). ``0`` fills every zero with the full prediction (best
        masked-value recovery).
    ``fill_hops`` (2)
        The neighbourhood of ``fill_gate`` and ``graph_fill``: where a random walk of this many steps on the
        graph can end (1: the cell and its neighbours; 2, as far as the two graph propagations of the model
        reach). On pbmc3k the 2-step rate keeps the clustering scores of the 1-step one and loses less on hidden
        values (see the Benchmarks page of the documentation).
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
        see the Benchmarks page of the documentation); the Leiden scores moved both ways (pbmc3k up, baron_mouse
        down on two of three seeds), so float32 stays the default.
    ``progress_bar`` (None)
        Show a progress bar (default: at Scanpy verbosity ``info`` or above).
    """
    return SCVGAEOptions.defaults()


def scvgae_input(X, transform: str):
    """The model input: the input layer ``X`` as float32, ``log1p``-transformed when ``transform`` says so."""
    Xm = sparse.csr_matrix(X, dtype=np.float32) if sparse.issparse(X) else np.asarray(X, dtype=np.float32)
    if transform == "log1p":
        Xm = Xm.log1p() if sparse.issparse(Xm) else np.log1p(Xm)
    return Xm


def predict_scvgae(
    module,
    sampler: SCVGAESampler,
    *,
    output: str,
    calibrate: bool,
    transform: str,
    fill_gate: float = 0.0,
    fill_scale: float = 1.0,
    fill_hops: int = 1,
    graph_weight: float = 0.0,
    posterior: bool = False,
    evidence: Evidence | None = None,
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Imputed matrix and latent (NumPy, float32) of a trained :class:`~scvgae_sc.nn.SCVGAE` on its sampler's input.

    The one prediction path of a training run and of saved models (:class:`~scvgae_sc.tl.ImputationModel`), for
    both data paths: the ``sampler`` (:func:`~scvgae_sc.tl._models._scvgae_samplers.scvgae_sampler`) yields blocks
    of cells of the heads' prediction, each finished (:func:`~scvgae_sc.tl._output.finish_rows`) and put into the
    output, then what needs all cells at once (:func:`~scvgae_sc.tl._output.finish_all_cells`). ``fill_gate`` and
    ``graph_weight`` use the cell graph (see :func:`scvgae_options`); ``fill_scale`` and ``graph_weight`` are the
    fitted weights of the prediction and of the graph's ``fill_hops`` neighbourhood mean (the defaults, 1, 0 and 1,
    are those of models saved before either existed). ``out`` receives the result when given (e.g. a
    :class:`numpy.memmap`). ``posterior`` (``output="denoised"``): the count model's posterior given each cell's own
    counts, which ``evidence`` (an :class:`~scvgae_sc.tl._output.Evidence`) then holds.
    """
    if posterior and output == "denoised" and evidence is None:
        raise ValueError("the posterior of output='denoised' needs the cells' counts (evidence)")
    if not (posterior and output == "denoised"):
        evidence = None
    x = sampler.x
    stats_of = None
    if output == "fill" and (fill_gate > 0 or graph_weight):
        stats_of = sampler.neighbourhood(x, hops=fill_hops, transform=transform, with_mean=bool(graph_weight))
    fill = {"fill_gate": fill_gate, "fill_scale": fill_scale, "graph_weight": graph_weight}
    imputed = sampler.output(out)
    with evaluating(module):
        z, blocks = sampler.reconstructions(module, x, output, evidence)
        for rows, recon in blocks:
            stats = stats_of(rows) if stats_of is not None else (None, None)
            x_rows = sampler.take(x, rows) if output == "fill" else None
            block = finish_rows(recon, x_rows, stats, output=output, transform=transform, **fill)
            imputed = sampler.put(imputed, rows, block)
    finish_all_cells(imputed, x, sampler.slices, output=output, calibrate=calibrate, transform=transform)
    return sampler.to_host(imputed, out), np.ascontiguousarray(z.cpu().numpy(), dtype=np.float32)


def fit_fill(
    module,
    sampler: SCVGAESampler,
    *,
    mask_rate: float,
    transform: str,
    fill_gate: float,
    fill_hops: int = 1,
    graph_fill: bool = False,
) -> tuple[float, float]:
    """Fill weights ``(fill_scale, graph_weight)`` fitted on freshly hidden observed entries, block by block of cells.

    The sampler hides a fresh ``mask_rate`` of the observed entries of its input (its own random draws); each block's
    reconstruction of the masked input, gated by the neighbourhood computed without the hidden entries, is added to
    one :class:`~scvgae_sc.tl._common.FillWeightFit` (:func:`~scvgae_sc.tl._output.add_fill_rows`) against the
    hidden values on the input layer's scale, which the network never saw.
    """
    hidden, x_in = sampler.mask(mask_rate)
    stats_of = None
    if fill_gate > 0 or graph_fill:
        stats_of = sampler.neighbourhood(x_in, hops=fill_hops, transform=transform, with_mean=graph_fill)
    fit = FillWeightFit(graph_fill)
    with evaluating(module):
        _, blocks = sampler.reconstructions(module, x_in)
        for rows, recon in blocks:
            h = sampler.take(hidden, rows)
            if not bool(h.any()):
                continue
            rate, graph_col = _hidden_stats(stats_of, rows, h, fill_gate, graph_fill)
            x_rows = sampler.take(sampler.x, rows)
            add_fill_rows(fit, recon, x_rows, h, rate, graph_col, transform=transform, fill_gate=fill_gate)
    return fit.weights()


def _hidden_stats(stats_of, rows, hidden, fill_gate: float, graph_fill: bool):
    """A block's neighbourhood rate and its gated neighbourhood mean at the ``hidden`` entries (``None`` unused)."""
    if stats_of is None:
        return None, None
    rate, graph_mean = stats_of(rows)  # the block's mean is dropped here: only its hidden entries are kept
    return rate, (gated(graph_mean[hidden], rate[hidden], fill_gate) if graph_fill else None)


class SCVGAEModel(ImputationModel):
    """scVGAE (Inoue, 2024): a GCN encoder with zero-inflated negative binomial heads (:class:`~scvgae_sc.nn.SCVGAE`).

    Built from an AnnData and the options of :func:`scvgae_options` (see :class:`~scvgae_sc.tl.ImputationModel`
    for the constructor), then trained by :meth:`~scvgae_sc.tl.ImputationModel.train`; ``tl.impute(method="scvgae")``
    does both::

        model = sv.tl.SCVGAEModel(adata, layer="normalized", counts_layer="counts", output="fill", fill_gate=0.4)
        model.train(max_epochs=100)
    """

    method = "scvgae"
    module_class = "SCVGAE"
    listing_order = 0
    options_class = SCVGAEOptions
    default_max_epochs = MAX_EPOCHS
    dense_copies = 20
    #: The input, its masked copy, the masks and the output (one copy less when the output goes to a file),
    #: measured above the data on simulated cells × 2,000 genes; the fill's statistics over 2 graph steps included.
    dense_copies_subgraph = 6
    streams_output = True
    denoised_source = "counts"
    subgraph_min_cells = SUBGRAPH_MIN_CELLS

    @classmethod
    def build_module(cls, module_kwargs: dict[str, Any]) -> Any:
        """:class:`~scvgae_sc.nn.SCVGAE` from its constructor arguments."""
        from ...nn import SCVGAE

        kwargs = dict(module_kwargs)
        return SCVGAE(kwargs.pop("n_genes"), kwargs.pop("n_cells"), **kwargs)

    def _predict_arrays(self, X, dev, adata: AnnData | None = None) -> tuple[np.ndarray, np.ndarray]:
        kwargs = dict(self.config["predict_kwargs"])
        batching, chunk = kwargs.pop("batching", "full"), kwargs.pop("chunk", 512)
        if kwargs.get("posterior"):
            kwargs["evidence"] = self._evidence(adata)
        if batching != "subgraph" and hasattr(self.module, "reset_cache"):
            self.module.reset_cache()  # the graph normalization is recomputed for these cells' graph
        sampler = scvgae_sampler(batching, scvgae_input(X, kwargs["transform"]), self.graph, dev, chunk=chunk)
        return predict_scvgae(self.module, sampler, **kwargs)

    def _fit(
        self, options: SCVGAEOptions, *, max_epochs: int | None, device: Any, random_state: int | None, out=None
    ) -> ImputeResult:
        """Train scVGAE on the input layer and the counts read by the constructor, and impute.

        ``out``: a preallocated float32 array (e.g. a :class:`numpy.memmap`) for the imputed matrix, subgraph
        mode only. With batch labels the graph built here is built per batch and size factors are per batch; a
        graph given by ``graph_key`` is trained on instead of building one.
        """
        import torch

        from ...nn import resolve_device

        inputs = self._inputs
        X, counts, provided_graph, batch_labels = (inputs[k] for k in ("X", "counts", "graph", "labels"))
        run = _SCVGAERun(options, X.shape, max_epochs, inputs["normalization"], random_state)
        run.check(provided_graph)
        dev = resolve_device(device)
        Xm = scvgae_input(X, run.transform)
        A, graph_info = run.graph(provided_graph, Xm, batch_labels)
        if random_state is not None:
            torch.manual_seed(int(random_state))
        model = self.build_module(run.module_kwargs)
        model.train_decoder = run.alpha > 0 or run.mask_rate > 0  # else no loss term reads the decoder
        trainer = run.trainer(model, dev)
        logg_start = logg.info(
            f"    training scVGAE on {run.n_cells} cells × {run.n_genes} genes, {A.nnz} edges, {dev}, "
            f"batching={run.batching!r}"
        )
        sf = size_factors(counts, batch_labels) if run.options.training.zinb_target == "counts" else None
        sampler = scvgae_sampler(
            run.batching,
            Xm,
            A,
            dev,
            chunk=run.chunk,
            counts=None if sf is None else counts,
            size_factors=sf,
            random_state=run.random_state,
        )
        del Xm
        plan = SCVGAEPlan(
            model,
            sampler,
            mask_rate=run.mask_rate,
            batch_size=run.batch_size,
            molecules=run.molecules(X),
            **run.loss_kwargs,
        )
        history = trainer.fit(plan)
        sampler.end_training()
        weights = (1.0, 0.0)
        if run.fit_scale:  # on a fresh mask: entries the network never saw
            weights = fit_fill(model, sampler, mask_rate=run.mask_rate, **run.fill_kwargs)
            logg.debug(f"    fill weights fitted on hidden entries: model {weights[0]:.3f}, graph {weights[1]:.3f}")
        predict_kwargs = run.predict_kwargs(*weights)
        evidence = Evidence(counts, size_factors(counts, batch_labels)) if run.posterior else None
        output_kwargs = {k: v for k, v in predict_kwargs.items() if k not in ("batching", "chunk")}
        imputed, latent = predict_scvgae(model, sampler, out=out, evidence=evidence, **output_kwargs)
        logg.debug("    finished training", time=logg_start)
        return ImputeResult(
            imputed=imputed if out is not None else np.ascontiguousarray(imputed, dtype=np.float32),
            latent=np.ascontiguousarray(latent, dtype=np.float32),
            history=history_arrays(history),
            params=run.params(*weights, trainer.precision),
            graph=sparse.csr_matrix(A, dtype=np.float32),
            graph_info=graph_info,
            device=str(dev),
            model_state={
                "module": model,
                "module_kwargs": dict(run.module_kwargs),
                "predict_kwargs": predict_kwargs,
            },
        )


class _SCVGAERun:
    """The resolved settings of one scVGAE training: every ``"auto"`` option decided here, once."""

    def __init__(self, options: SCVGAEOptions, shape, max_epochs, normalization, random_state) -> None:
        self.options = o = options
        self.n_cells, self.n_genes = shape
        auto = SCVGAE_AUTO_TRAINING[o.output.output]
        self.alpha, self.lr, mask_rate = (
            float(auto[k] if getattr(o.training, k) == "auto" else getattr(o.training, k))
            for k in ("alpha", "lr", "mask_rate")
        )
        self.n_epochs = int(auto["max_epochs"]) if max_epochs is None else int(max_epochs)
        self.random_state = random_state
        transform = o.training.transform
        if transform == "auto":
            transform = "log1p" if normalization == "total" else "none"
        self.transform = transform
        # tl.impute decides "auto" with the memory budget; a direct call decides by size
        self.batching = SCVGAEModel.resolve_batching(o.training.batching, *shape, "cpu", None)
        self.mask_rate, self.mask_weight = mask_rate, float(o.training.mask_weight)
        self.normalization = normalization
        self.objective = _resolve_objective(o, normalization, mask_rate)
        n = self.n_cells
        self.batch_size = n if not o.training.batch_size else min(int(o.training.batch_size), n)
        self.gate = float(o.output.fill_gate) if o.output.output == "fill" else 0.0
        self.chunk = self.batch_size
        fit_scale = o.output.fill_scale == "fit" or (o.output.fill_scale == "auto" and transform == "log1p")
        self.fit_scale = fit_scale and o.output.output == "fill" and self.mask_rate > 0
        self.graph_fill = bool(o.output.graph_fill) and self.fit_scale
        self.fill_hops = int(o.output.fill_hops)
        #: The denoised output is the count model's posterior given each cell's counts (a model of the counts only).
        self.posterior = (
            bool(o.output.posterior) and o.output.output == "denoised" and o.training.zinb_target == "counts"
        )
        self.module_kwargs = {
            "n_genes": self.n_genes,
            "n_cells": self.n_cells,
            "hidden": o.architecture.hidden,
            "variational": o.architecture.variational,
            "decoder_input": o.architecture.decoder_input,
            "heads": auto["heads"] if o.architecture.heads == "auto" else o.architecture.heads,
            "add_back": o.architecture.add_back,
            "add_back_init": float(o.architecture.add_back_init),
            "decoder_hidden": o.architecture.decoder_hidden,
            "cached": True,
        }

    def check(self, provided_graph) -> None:
        """Refuse what cannot train: too few cells for the graph, a variational model on subgraphs."""
        o = self.options
        if provided_graph is None and o.graph.graph == "knn" and self.n_cells < o.graph.n_neighbors + 1:
            raise ValueError(
                f"{self.n_cells} cells are too few for a graph with n_neighbors={o.graph.n_neighbors}; "
                "lower n_neighbors (at least n_neighbors + 1 cells are needed)."
            )
        if self.batching == "subgraph" and o.architecture.variational:
            raise ValueError(
                "variational=True needs the whole graph in every step (its mu / logvar layers propagate again); "
                "use batching='full', or variational=False for subgraph mini-batches."
            )

    def molecules(self, X) -> LayerMolecules | None:
        """The molecules objective's settings for input layer ``X`` (``None`` with ``objective="reconstruct"``)."""
        if self.objective != "molecules":
            return None
        return LayerMolecules.from_layer(X, self.normalization, fraction=MOLECULE_FRACTION, transform=self.transform)

    def graph(self, provided_graph, Xm, batch_labels):
        """The graph to train on and its description (see :func:`~scvgae_sc.tl._common.resolve_graph`)."""
        o = self.options
        graph_kwargs = (
            {"n_neighbors": o.graph.n_neighbors, "n_pcs": o.graph.n_pcs}
            if o.graph.graph == "knn"
            else {"percentile": o.graph.percentile}
        )
        return resolve_graph(
            provided_graph,
            Xm,
            random_state=self.random_state,
            batch=batch_labels,
            batch_mode=o.graph.batch_mode,
            method=o.graph.graph,
            **graph_kwargs,
        )

    def trainer(self, model, dev):
        """The :class:`~scvgae_sc.nn.Trainer` of this run."""
        from ...nn import Trainer

        return Trainer(
            model,
            lr=self.lr,
            weight_decay=float(self.options.training.weight_decay),
            max_epochs=self.n_epochs,
            device=dev,
            progress_bar=progress_enabled(self.options.training.progress_bar),
            random_state=self.random_state,
            precision=self.options.training.precision,
        )

    @property
    def loss_kwargs(self) -> dict[str, float]:
        """The arguments of :meth:`~scvgae_sc.nn.SCVGAE.loss` besides the data."""
        return {
            "alpha": self.alpha,
            "kl_weight": float(self.options.training.kl_weight),
            "hidden_weight": self.mask_weight,
        }

    @property
    def fill_kwargs(self) -> dict[str, Any]:
        """The settings of the fill weights' fit."""
        return {
            "transform": self.transform,
            "fill_gate": self.gate,
            "fill_hops": self.fill_hops,
            "graph_fill": self.graph_fill,
        }

    def predict_kwargs(self, scale: float, graph_weight: float) -> dict[str, Any]:
        """The prediction settings (saved with the model)."""
        return {
            "output": self.options.output.output,
            "calibrate": bool(self.options.output.calibrate),
            "transform": self.transform,
            "fill_gate": self.gate,
            "fill_scale": float(scale),
            "fill_hops": self.fill_hops,
            "graph_weight": float(graph_weight),
            "chunk": int(self.chunk),
            "batching": self.batching,
            "posterior": self.posterior,
        }

    def params(self, scale: float, graph_weight: float, precision: str) -> dict[str, Any]:
        """The flat parameters written to ``uns[key]["params"]``."""
        params = {k: v for k, v in self.options.as_dict().items() if k not in ("progress_bar",)}
        params.update(transform_used=self.transform, max_epochs_used=self.n_epochs, fill_scale_used=float(scale))
        params.update(alpha_used=self.alpha, lr_used=self.lr, mask_rate_used=self.mask_rate)
        params["heads_used"] = self.module_kwargs["heads"]
        params["graph_weight_used"] = float(graph_weight)
        params["batching_used"] = self.batching
        params["precision_used"] = precision
        params["posterior_used"] = self.posterior
        params["objective_used"] = self.objective
        return params


def _resolve_objective(options: SCVGAEOptions, normalization: str | None, mask_rate: float) -> str:
    """The objective to train: ``"auto"`` is ``"molecules"`` for the denoised output's count model alone.

    Elsewhere ``"auto"`` is ``"reconstruct"``; an explicit ``"molecules"`` is refused where it cannot run.
    """
    o = options
    objective = o.training.objective
    possible = o.training.zinb_target == "counts" and normalization in MOLECULE_LAYERS and mask_rate == 0
    if objective == "auto":
        return "molecules" if possible and o.output.output == "denoised" else "reconstruct"
    if objective == "molecules" and not possible:
        raise ValueError(
            "objective='molecules' splits the counts and normalizes one part as the input layer: it needs "
            "zinb_target='counts', mask_rate=0 and an input layer written by pp.normalize (method 'sqrt', 'log1p' or "
            f"'total'); got zinb_target={o.training.zinb_target!r}, mask_rate={mask_rate:g} and a layer whose "
            f"normalization is {normalization!r}."
        )
    return objective
