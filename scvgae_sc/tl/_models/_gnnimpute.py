"""GNNImpute (:class:`GNNImputeModel`): AnnData-free training and prediction of ``tl.impute(method="gnnimpute")``."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
from scanpy import logging as logg
from scipy import sparse

from ..._utils import to_dense_array
from .._common import evaluating, history_arrays, progress_enabled, resolve_graph, size_factors
from .._output import Evidence, finish_blocks, fit_fill_flat, nb_dispersion, nb_posterior_rows
from ._base import ImputationModel, ImputeResult
from ._gnnimpute_samplers import GNNImputeSampler, MoleculeSplit, Training, gnnimpute_sampler
from ._options import GNNImputeOptions, check_split
from ._plans import GNNImputePlan

if TYPE_CHECKING:
    from anndata import AnnData

#: Defaults of the method's own options (see :func:`gnnimpute_options`).
DEFAULTS: dict[str, Any] = GNNImputeOptions.defaults()
MAX_EPOCHS = 3000
#: ``patience="auto"``: epochs without improvement before early stopping, without / with the fill's graph term.
PATIENCE = 100
PATIENCE_GRAPH_FILL = 50
#: ``objective="molecules"``: the epochs when ``tl.impute(max_epochs=None)`` and the share of each count's molecules
#: the network reads.
MAX_EPOCHS_MOLECULES = 60
MOLECULE_FRACTION = 0.5
#: Fewer cells cannot be split into training, validation and test cells.
MIN_CELLS = 10


def gnnimpute_options() -> dict[str, Any]:
    r"""Return the options of ``tl.impute(method="gnnimpute", ...)`` and their defaults.

    What the method does (Xu et al., 2021, with the changes noted):

    * Input: ``log1p`` of the input layer, then z-scored per gene (genes without variance are only centred).
      The input layer should be linear normalized counts (``pp.normalize(method="total")``); other layers
      work but draw a warning.
    * Graph (when no ``graph_key`` is given): PCA (``n_pcs``) of ``log1p`` of the input layer, then each
      cell's ``n_neighbors`` nearest cells counting itself, row-normalized — ``pp.cell_graph(method="knn",
      n_neighbors=5, self_loops=True, normalize="row")`` on that matrix. GAT attention computes its own
      edge weights, so only the neighbour sets matter; every cell attends to itself once.
    * Network: two GAT layers (heads averaged) with BatchNorm, ReLU and dropout, a decoder ``Linear →
      BatchNorm → ReLU → Linear → ReLU`` (:class:`scvgae_sc.nn.GNNImputeModule`), sparse message passing.
      The bias of the decoder's last layer starts at each gene's mean of the input layer (not in the published
      code; the same results in about half the epochs).
    * Scale: the decoder output is the expression on the input layer's scale; in training it is
      multiplied by each cell's size factor (library size / median library size, from the counts layer)
      and compared with the input layer times the same factor — for a ``"total"`` layer, that is the
      cell's counts (as DCA, whose size-factor decoder GNNImpute's follows). The loss is thus the MSE on
      the layer's scale weighted by ``size_factor²``. The imputed matrix is the decoder output itself, on
      the input layer's scale.
    * Training (``objective="reconstruct"``, the published one): cells are split at random (``random_state``)
      into training, validation and test cells (``split``); the loss is the MSE over all entries of the training
      cells, early stopping watches the same loss on the validation cells (``val_loss``), and the best epoch's
      weights are kept (in memory). The test cells' MSE is reported as ``history["test_mse"]``. The default
      denoised output trains on molecule splits of the counts instead (``objective="molecules"``).

    ``n_neighbors`` (5), ``n_pcs`` (50)
        The kNN graph built when no ``graph_key`` is given (``n_neighbors`` counts the cell itself).
    ``patience`` (``"auto"``)
        Epochs without improvement of the validation loss before training stops. ``"auto"``: no early stopping
        with ``objective="molecules"``, 50 where the fill
        has the graph term (``graph_fill``; linear layers with masking, i.e. the masked-recovery task), 100
        elsewhere (``patience_used`` in ``uns[key]["params"]``). With the graph term the fill leans on the
        neighbourhood mean and longer training did not improve it on pbmc3k, bladder and pbmc68k (3 seeds each;
        pbmc3k Pearson / MSE 0.890 / 8.56 against 0.888 / 8.75 in 230 instead of 612 CPU seconds); on
        baron_mouse it scored 0.929 / 89.2 against 0.934 / 86.6 on seed 0 and 0.933 / 73.7 against 0.932 / 74.4 on
        seed 1 (see the Benchmarks page of the documentation). On the sqrt layer that the clustering
        protocol imputes patience 50 clustered worse (Leiden ARI 0.640 against 0.694 on pbmc3k), so it stays 100
        there.
    ``lr`` (2e-3), ``weight_decay`` (5e-4)
        Adam settings. The published training is ``patience=200, lr=1e-3, precision="32"``; the defaults
        (with ``precision="auto"``) took about 40 % of its CPU time on pbmc3k, with the same masked recovery
        and paper-protocol ARI on average and a higher Leiden ARI (see the Benchmarks page of the documentation).
        Early stopping makes the epoch count vary with the seed (210–1,140 epochs there).
    ``hidden`` (512), ``latent`` (50), ``heads`` (3)
        Width of the first GAT layer and of the decoder's hidden layer; width of the latent space
        (``obsm["X_gnnimpute"]``); attention heads per GAT layer (averaged).
    ``dropout`` (0.5), ``attention_dropout`` (0.6)
        Dropout after each encoder block and on the attention coefficients (the published values).
    ``split`` ((0.6, 0.2, 0.2))
        Fractions of cells for training, validation (early stopping) and test; they must sum to 1 and give at
        least one training and one validation cell. Unused by ``objective="molecules"`` without ``patience``.
    ``mask_rate`` (0.1), ``mask_weight`` (1)
        Self-supervised masking of ``objective="reconstruct"`` (not in the published method): each epoch this
        fraction of the observed non-zeros is hidden from the input (set to the value of a zero), and the model is
        also trained (weight ``mask_weight``) to recover the hidden entries of the training cells. The validation loss
        includes the same term for a fixed mask of the validation cells, so early stopping watches
        imputation, not only reconstruction. ``0`` turns it off (the published training).
    ``objective`` (``"auto"``)
        What the network is trained to predict. ``"reconstruct"`` (the published objective, with ``mask_rate``):
        the input layer of the training cells, early stopping on the validation cells. ``"molecules"``: each
        epoch every count is split binomially in two halves of its molecules; the network reads one half
        (normalized as the input layer) and its loss is the MSE of the other half, on the count scale, over all
        cells (no cell is held out: the held-out molecules play that part). The two halves are independent samples
        of the same expression, so the network cannot gain by copying its input and learns what the cell's
        neighbourhood and the genes' co-expression say about it (Noise2Self for counts). It trains ``max_epochs``
        epochs (60 when ``tl.impute(max_epochs=None)``) without early stopping; an explicit ``patience`` splits
        the cells by ``split`` again and stops early on the validation cells' held-out molecules. It needs a
        ``total`` input layer. ``"auto"``: ``"molecules"`` for ``output="denoised"`` on a ``total`` layer,
        ``"reconstruct"`` elsewhere (``objective_used`` in ``uns[key]["params"]``). On pbmc3k's molecular
        cross-validation the denoised output scored 0.0515 with it (seeds 0–2) against 0.093 with the
        reconstruction objective (seed 0; 0.092 without imputation); see the Benchmarks page of the documentation.
    ``output`` (``"denoised"``)
        ``"fill"``: observed non-zeros are kept and zeros replaced by the model's prediction (see
        ``fill_gate`` and ``fill_scale``); ``"recon"``: the model's output everywhere (the published output);
        ``"denoised"``: the model's estimate of the cell's expression everywhere, as the expected
        ``log1p``-normalized value of a new sample of the cell's molecules, on the input layer's scale (on a
        ``total`` layer the output is a mean and is turned into :math:`E[\log(1 + Y)]`, :math:`Y \sim
        \mathrm{Poisson}`, then ``expm1``; on a ``log1p`` or ``sqrt`` layer the least-squares output already
        estimates it). The input layer must come from :func:`~scvgae_sc.pp.normalize`. The fill wins the masked
        benchmark, which scores hidden non-zeros only, and is far worse as an estimate of every entry (pbmc3k
        molecular cross-validation: 0.334 against 0.092 without imputation).
    ``posterior`` (True)
        With ``objective="molecules"`` and ``output="denoised"``: the decoder's output is the prior mean of a
        negative binomial whose per-gene dispersion is fitted to the cells' counts by maximum likelihood, and the
        denoised value is the posterior mean given the cell's own counts (as scVGAE's ``posterior``, without
        dropout): genes that vary little between similar cells keep the network's value, noisy ones follow the
        cell's counts. The dispersions are saved with the model (``posterior_used`` in ``uns[key]["params"]``).
    ``fill_gate`` (0), ``fill_scale`` (``"auto"``)
        As for scVGAE (:func:`scvgae_options`): with ``fill_gate > 0`` a zero is filled with the full prediction
        where the gene is detected in at least ``fill_gate`` of the cell's graph neighbourhood, and with the
        prediction times (detection rate / ``fill_gate``) elsewhere. The default ``0`` fills every zero with
        the full prediction: a gate of 0.4 cut masked recovery on pbmc3k from Pearson 0.88 / MSE 9.5 to
        0.72 / 27.3 (seed 0, measured over the cell's direct neighbours before ``fill_hops`` existed) and did not
        help the clustering scores.
        ``fill_scale="fit"`` multiplies the fill values by the least-squares factor fitted on a fresh mask of
        observed values (needs ``mask_rate > 0``); ``"auto"`` fits only together with ``graph_fill`` (GNNImpute
        is trained on the layer's own scale), ``"none"`` never.
    ``fill_hops`` (3), ``graph_fill`` (``"auto"``)
        As for scVGAE: whether a zero's fill is ``w_model · prediction + w_graph · mean detected value in the
        cell's neighbourhood``, both weights fitted by non-negative least squares on a fresh mask of observed
        values (needs ``mask_rate > 0``; the fitted weights are ``fill_scale_used`` and ``graph_weight_used`` in
        ``uns[key]["params"]``, the choice ``graph_fill_used``), and the neighbourhood of that mean and of
        ``fill_gate``: the cells a random walk of ``fill_hops`` steps reaches on the k-NN graph made symmetric and
        unweighted (a cell, the cells it lists and the cells that list it). ``"auto"`` turns the graph term on for
        linear layers (``pp.normalize(method="total")``, masked or not), the layers whose hidden values the
        masked-recovery benchmark scores, and off elsewhere (e.g. the sqrt layer that the clustering protocol
        imputes). On pbmc3k's masked task the same trainings recovered hidden values with Pearson / MSE
        0.873 / 10.25 and 0.887 / 8.99 without it, 0.881 / 9.34 and 0.893 / 8.33 with it (seeds 0, 1; mean of three
        seeds 0.888 / 8.75; see the Benchmarks page of the documentation). A walk on the directed,
        self-weighted graph the model trains on gave a weak neighbourhood mean.
    ``batch_mode`` (``"within"``)
        With ``tl.impute(batch_key=...)``, how the graph built here treats batches: neighbours only
        ``"within"`` each cell's batch, or ``"balanced"`` across all batches (see :func:`scvgae_sc.pp.cell_graph`).
        Unused without ``batch_key`` or with a ``graph_key``. Size factors are per batch either way.
    ``precision`` (``"auto"``)
        ``"bf16"`` trains under bfloat16 autocast; ``"auto"`` does so where the device has fast bfloat16
        arithmetic (:func:`scvgae_sc.nn.fast_bf16`: CUDA GPUs that support it, CPUs with AVX-512 BF16 or AMX),
        float32 (``"32"``) elsewhere. GNNImpute's cost is dominated by matrix products, which bfloat16 runs
        ~2.7× faster on such a CPU. The choice is ``params["precision_used"]``.
    ``batching`` (``"auto"``), ``batch_size`` (512)
        ``"full"``: one optimizer step per epoch over the whole graph (the published training). ``"subgraph"``:
        each epoch visits all cells in random batches of ``batch_size``, one step per batch; a batch's first
        GAT layer is computed exactly from its cells and their neighbours, its second layer reads the
        neighbours' first-layer output from a history buffer (refreshed whenever a cell is in a batch, so at
        most one epoch old; historical embeddings as GNNAutoScale), and the loss covers the batch's
        training cells. Memory: about 12 dense copies of the data instead of 28; validation and prediction
        run exactly, in chunks of ``batch_size`` cells (whole-graph passes would hold attention messages for
        every edge). ``"auto"`` picks ``"subgraph"`` when full-batch training
        would not fit the memory budget (``max_memory`` of :func:`~scvgae_sc.tl.impute`). Under ``torchrun``,
        ``"subgraph"`` shares each epoch's batches among the processes; ``"full"`` runs the same step in each.
    ``progress_bar`` (None)
        Show a progress bar (default: at Scanpy verbosity ``info`` or above).
    """
    return GNNImputeOptions.defaults()


def split_cells(
    n_cells: int, split: tuple[float, float, float], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Boolean masks of training, validation and test cells drawn with ``rng``.

    As the published code: ``floor(n · (val + test))`` cells are held out, of which
    ``floor(held_out · test / (val + test))`` are test cells and the rest validation cells.

    Raises
    ------
    ValueError
        When there are fewer than :data:`MIN_CELLS` cells, or the split leaves no training or no validation cell.
    """
    if n_cells < MIN_CELLS:
        raise ValueError(
            f"GNNImpute needs at least {MIN_CELLS} cells to split them into training, validation and test cells; "
            f"got {n_cells}."
        )
    _, val, test = split
    n_held = int(math.floor(n_cells * (val + test) + 1e-9))
    n_test = int(math.floor(n_held * test / (val + test) + 1e-9)) if n_held else 0
    n_val = n_held - n_test
    n_train = n_cells - n_held
    if n_val < 1 or n_train < 1:
        raise ValueError(
            f"split={tuple(split)} gives {n_train} training, {n_val} validation and {n_test} test cells out of "
            f"{n_cells}; GNNImpute needs at least one training and one validation cell (early stopping watches the "
            "validation loss). Raise the training and validation fractions."
        )
    order = rng.permutation(n_cells)
    masks = []
    for idx in (order[n_held:], order[n_test:n_held], order[:n_test]):
        m = np.zeros(n_cells, dtype=bool)
        m[idx] = True
        masks.append(m)
    return masks[0], masks[1], masks[2]


def zscore_stats(Xlog: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene mean and standard deviation (1 for genes without variance) of ``Xlog``, float32."""
    mean = Xlog.mean(axis=0, dtype=np.float64).astype(np.float32)
    std = Xlog.std(axis=0, dtype=np.float64).astype(np.float32)
    std[std == 0] = 1.0
    return mean, std


def gnnimpute_input(X) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """GNNImpute's model input from the input layer ``X``: ``(Xlin, Xlog, Xz, zero_z)``.

    ``Xlin`` is ``X`` dense float32 (the target), ``Xlog`` its ``log1p``, ``Xz`` the model input (``Xlog``
    z-scored per gene; genes without variance only centred) and ``zero_z`` what a zero becomes in ``Xz``.
    """
    Xlin = to_dense_array(X, np.float32)
    Xlog = np.log1p(Xlin)
    mean, std = zscore_stats(Xlog)
    Xz = (Xlog - mean) / std
    zero_z = -mean / std  # what a zero becomes
    return Xlin, Xlog, Xz, zero_z


def predict_gnnimpute(
    module,
    sampler: GNNImputeSampler,
    *,
    output: str,
    fill_gate: float = 0.0,
    fill_scale: float = 1.0,
    fill_hops: int = 1,
    graph_weight: float = 0.0,
    fill_symmetric: bool = False,
    theta: np.ndarray | list | None = None,
    evidence: Evidence | None = None,
    forward: dict | None = None,
):
    """``(pred, imputed, latent)`` from a trained :class:`~scvgae_sc.nn.GNNImputeModule` on its sampler's input.

    The one prediction path of a training run and of saved models (:class:`~scvgae_sc.tl.ImputationModel`), for
    both data paths: the ``sampler`` (:func:`~scvgae_sc.tl._models._gnnimpute_samplers.gnnimpute_sampler`) runs the
    network over all cells (:meth:`~scvgae_sc.tl._models._gnnimpute_samplers.GNNImputeSampler.evaluate`: in one
    pass, or in chunks of cells on subgraphs, the same numbers with less memory) and holds the input layer and the
    cell graph. ``pred`` is the model output (a tensor on the input layer's scale, clamped at 0), ``imputed`` and
    ``latent`` float32 NumPy arrays. ``fill_gate`` and ``graph_weight`` use the cell graph (see
    :func:`gnnimpute_options`); ``fill_scale`` and ``graph_weight`` are the fitted weights of the prediction and of
    the graph's ``fill_hops`` neighbourhood mean, ``fill_symmetric`` whether that neighbourhood is a walk on the
    symmetrized, unweighted graph (:class:`Neighbourhood`; the defaults are those of models saved before these
    options existed). With ``theta`` (the per-gene dispersion, ``posterior=True``) the denoised output is the
    posterior given each cell's counts (``evidence``), the decoder output its prior mean
    (:func:`~scvgae_sc.tl._output.nb_posterior`). ``forward``: the network's output on the sampler's input when
    already computed, so that it is not run again.
    """
    out = forward if forward is not None else sampler.evaluate(module)
    pred = out["recon"].float().clamp_min(0)
    if theta is not None and output == "denoised":
        if evidence is None:
            raise ValueError("the posterior of output='denoised' needs the cells' counts (evidence)")
        pred = nb_posterior_rows(pred, theta, evidence, chunk=sampler.chunk)
    fill = {"fill_gate": fill_gate, "fill_scale": fill_scale, "fill_hops": fill_hops, "graph_weight": graph_weight}
    imputed = finish_blocks(pred, sampler.target, sampler.graph, output=output, fill_symmetric=fill_symmetric, **fill)
    imputed = imputed.cpu().numpy()
    latent = out["z"].float().cpu().numpy()
    return pred, np.ascontiguousarray(imputed, dtype=np.float32), np.ascontiguousarray(latent, dtype=np.float32)


def fit_fill(module, sampler: GNNImputeSampler, *, fill_gate: float, fill_hops: int, graph_fill: bool):
    """Fill weights ``(fill_scale, graph_weight)`` fitted on a fresh mask of the observed non-zeros.

    The sampler hides a fresh share of the observed non-zeros (its own random draws); the network's output for the
    input without them (an exact pass over all cells) and the graph's neighbourhood mean, computed without them
    too, are fitted to the hidden values (:func:`~scvgae_sc.tl._output.fit_fill_flat`).
    """
    hidden = sampler.draw_mask()
    with evaluating(module):
        recon = sampler.forward_all(module, sampler.corrupt(hidden))["recon"]
    kwargs = {"fill_gate": fill_gate, "fill_hops": fill_hops, "graph_fill": graph_fill}
    return fit_fill_flat(recon, sampler.target, sampler.observed[hidden], sampler.graph, **kwargs)


class GNNImputeModel(ImputationModel):
    """GNNImpute (Xu et al., 2021): two graph-attention layers on a k-NN cell graph.

    The network is :class:`~scvgae_sc.nn.GNNImputeModule`.

    Built from an AnnData and the options of :func:`gnnimpute_options` (see :class:`~scvgae_sc.tl.ImputationModel`
    for the constructor), then trained by :meth:`~scvgae_sc.tl.ImputationModel.train`;
    ``tl.impute(method="gnnimpute")`` does both::

        model = sv.tl.GNNImputeModel(adata, layer="total", counts_layer="counts")
        model.train()
    """

    method = "gnnimpute"
    module_class = "GNNImputeModule"
    listing_order = 1
    options_class = GNNImputeOptions
    default_max_epochs = MAX_EPOCHS
    dense_copies = 28
    #: Also the target and the validation and prediction passes, which run in chunks of cells; measured above the
    #: data on simulated cells × 2,000 genes, the fill's graph term included.
    dense_copies_subgraph = 12

    @classmethod
    def build_module(cls, module_kwargs: dict[str, Any]) -> Any:
        """:class:`~scvgae_sc.nn.GNNImputeModule` from its constructor arguments."""
        from ...nn import GNNImputeModule

        kwargs = dict(module_kwargs)
        return GNNImputeModule(kwargs.pop("n_genes"), **kwargs)

    def _predict_arrays(self, X, dev, adata: AnnData | None = None) -> tuple[np.ndarray, np.ndarray]:
        import torch

        Xlin, _, Xz, _ = gnnimpute_input(X)
        x, target = torch.from_numpy(Xz).to(dev), torch.from_numpy(Xlin).to(dev)
        pk = dict(self.config["predict_kwargs"])
        batching, chunk = pk.pop("batching", "full"), pk.pop("chunk", 512)
        if pk.get("theta") is not None:
            pk["evidence"] = self._evidence(adata)
        sampler = gnnimpute_sampler(batching, self.module, x, target, self.graph, chunk=chunk)
        _, imputed, latent = predict_gnnimpute(self.module, sampler, **pk)
        return imputed, latent

    def _fit(
        self, options: GNNImputeOptions, *, max_epochs: int | None, device: Any, random_state: int | None, out=None
    ) -> ImputeResult:
        """Train GNNImpute on the input layer and the counts read by the constructor, and impute.

        With batch labels the graph built here is built per batch and size factors are per batch. ``out`` is not
        used (the result is copied to a file by the caller).
        """
        from ...nn import resolve_device

        inputs = self._inputs
        X, counts, provided_graph, batch_labels = (inputs[k] for k in ("X", "counts", "graph", "labels"))
        normalization = inputs["normalization"]
        run = _GNNImputeRun(options, X.shape, max_epochs, normalization, random_state)
        run.check(provided_graph)
        dev = resolve_device(device)
        _warn_normalization(normalization)
        plan, model, sampler, A, graph_info = _prepare(run, X, counts, provided_graph, batch_labels, dev)
        trainer = run.trainer(model, dev)
        start = logg.info(
            f"    training GNNImpute on {run.n_cells} cells × {run.n_genes} genes ({run.n_train} training, "
            f"{run.n_val} validation, {run.n_test} test cells), {A.nnz} edges, {dev}"
        )
        history = trainer.fit(plan, plan.val_step if run.early_stopping else None)
        sampler.end_training()
        weights = (1.0, 0.0)
        if run.fit_fill:  # on a fresh mask: entries the network never saw
            weights = fit_fill(model, sampler, fill_gate=run.gate, fill_hops=run.fill_hops, graph_fill=run.graph_fill)
        predict_kwargs = run.predict_kwargs(*weights)
        evidence = Evidence(counts, sampler.sf.cpu().numpy()) if run.posterior else None
        forward = sampler.evaluate(model)
        if run.posterior:  # the per-gene dispersion of the counts around the trained decoder's means
            predict_kwargs["theta"] = nb_dispersion(forward["recon"].float().clamp_min(0), evidence).tolist()
        output_kwargs = {k: v for k, v in predict_kwargs.items() if k not in ("batching", "chunk")}
        pred, imputed, latent = predict_gnnimpute(model, sampler, evidence=evidence, forward=forward, **output_kwargs)
        del forward
        if run.test_cells.any():
            import torch
            import torch.nn.functional as F

            test_rows = torch.from_numpy(np.flatnonzero(run.test_cells)).to(dev)
            history["test_mse"] = float(F.mse_loss(pred[test_rows], sampler.target[test_rows]))
        logg.debug(f"    stopped after {history['n_epochs']} epochs (best epoch {history['best_epoch']})", time=start)
        return ImputeResult(
            imputed=np.ascontiguousarray(imputed, dtype=np.float32),
            latent=np.ascontiguousarray(latent, dtype=np.float32),
            history=history_arrays(history),
            params=run.params(*weights, trainer.precision),
            graph=sparse.csr_matrix(A, dtype=np.float32),
            graph_info=graph_info,
            device=str(dev),
            model_state={"module": model, "module_kwargs": dict(run.module_kwargs), "predict_kwargs": predict_kwargs},
        )


def _warn_normalization(normalization: str | None) -> None:
    if normalization != "total":
        how = f"was made by normalize(method={normalization!r})" if normalization else "has an unknown normalization"
        logg.warning(
            f"GNNImpute models linear normalized counts (pp.normalize(method='total')), but the input layer {how}; "
            "running on it anyway. The output is on the input layer's scale."
        )


class _GNNImputeRun:
    """The resolved settings of one GNNImpute training: every ``"auto"`` option decided here, once."""

    def __init__(self, options: GNNImputeOptions, shape, max_epochs, normalization, random_state) -> None:
        self.options = o = options
        self.n_cells, self.n_genes = shape
        self.objective = _resolve_objective(o, normalization)
        molecules = self.objective == "molecules"
        self.posterior = molecules and o.output.posterior and o.output.output == "denoised"
        default_epochs = MAX_EPOCHS_MOLECULES if molecules else MAX_EPOCHS
        self.n_epochs = default_epochs if max_epochs is None else int(max_epochs)
        self.random_state = random_state
        # the molecules objective holds out molecules, not cells: every cell trains unless early stopping is asked for
        self.early_stopping = not (molecules and o.training.patience == "auto")
        if self.early_stopping:
            rng = np.random.default_rng(random_state)
            cells = split_cells(self.n_cells, check_split(o.training.split), rng)
        else:
            cells = (
                np.ones(self.n_cells, dtype=bool),
                np.zeros(self.n_cells, dtype=bool),
                np.zeros(self.n_cells, dtype=bool),
            )
        self.train_cells, self.val_cells, self.test_cells = cells
        self.n_train, self.n_val = int(self.train_cells.sum()), int(self.val_cells.sum())
        self.n_test = int(self.test_cells.sum())
        self.mask_rate, self.mask_weight = float(o.training.mask_rate), float(o.training.mask_weight)
        self.use_mask = self.mask_rate > 0 and self.mask_weight > 0 and not molecules
        self.batching = GNNImputeModel.resolve_batching(o.training.batching, *shape, "cpu", None)
        self.chunk = min(int(o.training.batch_size), self.n_cells)
        self.gate = float(o.output.fill_gate) if o.output.output == "fill" else 0.0
        self.fill_hops = int(o.output.fill_hops)
        graph_fill = o.output.graph_fill if o.output.graph_fill != "auto" else normalization == "total"
        self.graph_fill = (
            bool(graph_fill) and o.output.output == "fill" and o.output.fill_scale != "none" and self.use_mask
        )
        fit = o.output.fill_scale == "fit" or self.graph_fill
        self.fit_fill = o.output.output == "fill" and self.use_mask and fit
        patience = o.training.patience
        if patience == "auto":
            patience = None if molecules else PATIENCE_GRAPH_FILL if self.graph_fill else PATIENCE
        self.patience = None if patience is None else int(patience)
        self.module_kwargs = {
            "n_genes": self.n_genes,
            "hidden": o.architecture.hidden,
            "latent": o.architecture.latent,
            "heads": o.architecture.heads,
            "dropout": float(o.architecture.dropout),
            "attention_dropout": float(o.architecture.attention_dropout),
            "add_self_loops": True,
        }

    def check(self, provided_graph) -> None:
        """Refuse a graph of the wrong size, or too many neighbours for the cells."""
        n = self.n_cells
        if provided_graph is not None and provided_graph[0].shape != (n, n):
            shape = provided_graph[0].shape
            raise ValueError(f"The graph is {shape[0]} × {shape[1]}, but the data has {n} cells.")
        if provided_graph is None and self.options.graph.n_neighbors >= n:
            raise ValueError(
                f"n_neighbors={self.options.graph.n_neighbors} (the cell itself included) needs more than {n} cells; "
                "lower n_neighbors."
            )
        from ...nn import rank, world_size

        if self.batching == "full" and world_size() > 1 and rank() == 0:
            logg.warning(
                f"GNNImpute with batching='full' makes one step per epoch on the whole graph: each of the "
                f"{world_size()} processes runs the same step (gradients averaged, the result is that of one "
                "process), so several processes do not make it faster. batching='subgraph' shares each epoch's "
                "batches among them."
            )

    def trainer(self, model, dev):
        """The :class:`~scvgae_sc.nn.Trainer` of this run (early stopping on the validation loss)."""
        from ...nn import Trainer

        return Trainer(
            model,
            lr=float(self.options.training.lr),
            weight_decay=float(self.options.training.weight_decay),
            max_epochs=self.n_epochs,
            device=dev,
            early_stopping=self.early_stopping,
            patience=self.patience or 1,
            progress_bar=progress_enabled(self.options.training.progress_bar),
            random_state=self.random_state,
            precision=self.options.training.precision,
        )

    def predict_kwargs(self, scale: float, graph_weight: float) -> dict[str, Any]:
        """The prediction settings (saved with the model)."""
        kwargs = {"output": self.options.output.output, "fill_gate": self.gate, "fill_scale": float(scale)}
        kwargs.update(batching=self.batching, fill_hops=self.fill_hops, graph_weight=float(graph_weight))
        kwargs.update(fill_symmetric=True, chunk=self.chunk)
        return kwargs

    def params(self, scale: float, graph_weight: float, precision: str) -> dict[str, Any]:
        """The flat parameters written to ``uns[key]["params"]``."""
        params = {k: v for k, v in self.options.as_dict().items() if k not in ("progress_bar",)}
        params.update(max_epochs_used=self.n_epochs, n_train=self.n_train, n_val=self.n_val)
        params["batching_used"] = self.batching
        params["precision_used"] = precision
        params["fill_scale_used"] = float(scale)
        params["graph_weight_used"] = float(graph_weight)
        params["graph_fill_used"] = self.graph_fill
        params["patience_used"] = self.patience
        params["objective_used"] = self.objective
        params["posterior_used"] = self.posterior
        params["n_test"] = self.n_test
        return params


def _resolve_objective(options: GNNImputeOptions, normalization: str | None) -> str:
    """``objective="auto"``: ``"molecules"`` for the denoised output of a ``total`` layer, ``"reconstruct"`` else."""
    objective = options.training.objective
    if objective == "molecules" and normalization != "total":
        raise ValueError(
            "objective='molecules' splits the counts and normalizes each part as the input layer: it needs a layer "
            f"written by pp.normalize(method='total'), but the input layer's normalization is {normalization!r}."
        )
    if objective == "auto":
        objective = "molecules" if options.output.output == "denoised" and normalization == "total" else "reconstruct"
    return objective


def _prepare(run: _GNNImputeRun, X, counts, provided_graph, batch_labels, dev):
    """``(plan, module, sampler, graph, graph_info)``: the graph, the initialized module, its data path and plan."""
    import torch

    Xlin, Xlog, Xz, zero_z = gnnimpute_input(X)  # model input: log1p, then z-score per gene
    A, graph_info = resolve_graph(
        provided_graph,
        sparse.csr_matrix(X, dtype=np.float32).log1p() if sparse.issparse(X) else Xlog,
        random_state=run.random_state,
        info={"input": "log1p"},
        batch=batch_labels,
        batch_mode=run.options.graph.batch_mode,
        method="knn",
        n_neighbors=run.options.graph.n_neighbors,
        n_pcs=run.options.graph.n_pcs,
        self_loops=True,
        normalize="row",
    )
    stats = zscore_stats(Xlog) if run.objective == "molecules" else None
    del Xlog
    if run.random_state is not None:
        torch.manual_seed(int(run.random_state))
    model = GNNImputeModel.build_module(run.module_kwargs)
    with torch.no_grad():  # start at each gene's mean: from ~0 the ReLU decoder needs hundreds of epochs to get there
        model.decoder[-2].bias.copy_(torch.from_numpy(Xlin.mean(axis=0, dtype=np.float64).astype(np.float32)))
    x = torch.from_numpy(Xz).to(dev)
    del Xz
    sf = torch.from_numpy(size_factors(counts, batch_labels)).to(dev)
    gen = torch.Generator(device=dev)
    gen.manual_seed(0 if run.random_state is None else int(run.random_state))
    molecules = None
    if stats is not None:
        mean, std = (torch.from_numpy(v).to(dev) for v in stats)
        counts_csr = sparse.csr_matrix(counts, dtype=np.float32)
        molecules = MoleculeSplit(counts_csr, sf, mean, std, fraction=MOLECULE_FRACTION, gen=gen)
    # a mask weight of 0 trains without masking (the sampler then draws no mask)
    mask_rate = run.mask_rate if run.mask_weight > 0 else 0.0
    cells = (run.train_cells, run.val_cells)
    training = Training(torch.from_numpy(zero_z).to(dev), sf, cells, mask_rate, gen, molecules)
    target = torch.from_numpy(Xlin).to(dev)
    sampler = gnnimpute_sampler(run.batching, model, x, target, A, chunk=run.chunk, training=training)
    plan = GNNImputePlan(model, sampler, mask_weight=run.mask_weight, batch_size=run.chunk)
    return plan, model, sampler, A, graph_info
