"""The base class of the imputation methods: a registry by method name, construction, training, save / load, predict.

One subclass per method (:class:`~scvgae_sc.tl._models.SCVGAEModel`, :class:`~scvgae_sc.tl._models.GNNImputeModel`)
registers itself under its method name; :func:`scvgae_sc.tl.impute` looks the class up by that name, builds it from
the AnnData and the options, trains it and writes the result, so a new method is a new subclass and nothing else.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from os import PathLike
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from anndata import AnnData
from scanpy import logging as logg
from scipy import sparse

from ... import _utils
from ..._constants import COUNTS, NORMALIZED, connectivities_key, latent_key
from ..._utils import check_adata, check_counts, check_memory, check_nonnegative, get_layer, params_for_uns
from ..._version import __version__
from .._common import size_factors
from .._inputs import read_inputs
from .._output import Evidence, denoise_scale, finish_denoised
from ._options import MethodOptions

#: Version of the on-disk format (``major.minor``). A reader refuses a newer major or minor version; a minor
#: bump adds fields an older reader could ignore, a major one changes their meaning.
FORMAT_VERSION = "1.0"
_FILES = {"config": "model.json", "weights": "weights.pt", "graph": "graph.npz", "history": "history.npz"}
#: The model class of each method name (filled by subclasses of :class:`ImputationModel`).
_REGISTRY: dict[str, type[ImputationModel]] = {}


@dataclass
class ImputeResult:
    """What a method's training run hands back to :meth:`ImputationModel.train` (tensors converted to NumPy)."""

    imputed: np.ndarray
    latent: np.ndarray
    history: dict[str, np.ndarray]
    params: dict[str, Any]
    graph: sparse.csr_matrix
    graph_info: dict[str, Any]
    device: str
    #: What a saved model needs: ``"module"`` (the trained torch module), ``"module_kwargs"`` (its constructor
    #: arguments) and ``"predict_kwargs"`` (of the method's prediction).
    model_state: dict[str, Any] | None = None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = str(version).split(".")[:2]
    return int(major), int(minor)


def check_max_epochs(max_epochs: Any) -> None:
    """Refuse anything but a positive integer or ``None``."""
    if max_epochs is not None and (not isinstance(max_epochs, int | np.integer) or max_epochs < 1):
        raise ValueError(f"max_epochs must be a positive integer or None, got {max_epochs!r}.")


def _check_filename(filename: Any, n_ranks: int) -> Path | None:
    if filename is None:
        return None
    if n_ranks > 1:
        raise ValueError(
            f"filename= is not supported with {n_ranks} processes (every rank would write the same file); "
            "impute into memory and write the result from rank 0, or run as one process."
        )
    if not isinstance(filename, str | os.PathLike):
        raise TypeError(f"filename must be a path or None, got {type(filename).__name__}.")
    filename = Path(filename)
    if filename.exists():
        raise ValueError(f"{str(filename)!r} exists; remove it or choose another filename.")
    if not filename.parent.is_dir():
        raise ValueError(f"The folder of filename={str(filename)!r} does not exist.")
    return filename


class ImputationModel:
    """An imputation model: built from the data and its options, trained, then saved, loaded and re-applied.

    Each method is a subclass registered under its name (:class:`~scvgae_sc.tl.SCVGAEModel` is
    ``ImputationModel.registered("scvgae")``, :class:`~scvgae_sc.tl.GNNImputeModel` ``"gnnimpute"``). As scvi-tools'
    models, it is built from an AnnData and the method's options, then trained::

        model = sv.tl.SCVGAEModel(adata, layer="normalized", counts_layer="counts", output="fill")
        model.train(max_epochs=100, device="cpu")
        imputed = model.predict()  # the cells the model was built on
        model.save("scvgae_model")

    :func:`scvgae_sc.tl.impute` does exactly this and writes the result into the AnnData; ``return_model=True``
    returns the model, and :meth:`ImputationModel.load` reads a saved one. Both methods are *transductive*: the
    model holds the cell graph and (scVGAE) a per-cell scale, so it applies to the same cells and genes, in the
    same order (checked by name), read from the layer it was trained on — e.g. the AnnData read back from a file,
    with the imputed layer dropped to save space. For a model trained on CPU, :meth:`predict` on CPU gives exactly
    the matrix :func:`~scvgae_sc.tl.impute` wrote (GPU kernels are not bit-reproducible: expect float32 rounding
    differences across devices).

    On disk a model is a folder: ``model.json`` (method, module constructor arguments, prediction settings,
    input layer, training parameters, cell and gene names, format and package versions), ``weights.pt``
    (:func:`torch.save` of the module's ``state_dict``), ``graph.npz`` (the cell graph) and ``history.npz``
    (the training curves).

    The class attributes below describe the method to :func:`~scvgae_sc.tl.impute` (memory estimate,
    ``batching="auto"``).

    Parameters
    ----------
    adata
        Annotated data matrix with a normalized ``layer`` and raw counts in ``counts_layer`` (see
        :func:`scvgae_sc.tl.impute`; a missing layer is an error here, it is not made from the counts).
        The model keeps a reference to it (:attr:`adata`).
    layer
        Normalized layer to impute (``None``: ``X``). Non-negative.
    counts_layer
        Raw counts of the same cells and genes (non-negative integers).
    graph_key
        Key of a graph from :func:`scvgae_sc.pp.cell_graph` to train on. ``None`` builds the method's own graph
        (from ``layer``) when training starts.
    batch_key
        Column of ``adata.obs`` with each cell's batch (``None``: no batches); see :func:`scvgae_sc.tl.impute`.
    options
        The method's typed options (e.g. ``SCVGAEModel.make_options(output="fill")``); ``None``: the defaults.
    **option_kwargs
        The method's options as flat keyword arguments, as :func:`scvgae_sc.tl.impute` takes them (see
        :func:`scvgae_sc.tl.scvgae_options`, :func:`scvgae_sc.tl.gnnimpute_options`); they override ``options``.

    Raises
    ------
    TypeError
        For the base class itself, or an unknown option.
    ValueError
        For a missing or invalid layer, counts layer, graph or batch column, or an option out of range.
    """

    #: The method's name (the ``method`` of :func:`~scvgae_sc.tl.impute`).
    method: ClassVar[str] = ""
    #: The torch module's class name, as written to ``model.json``.
    module_class: ClassVar[str] = ""
    #: The options of the method.
    options_class: ClassVar[type[MethodOptions]] = MethodOptions
    #: Training epochs when ``max_epochs`` is ``None``.
    default_max_epochs: ClassVar[int] = 100
    #: Peak memory of a CPU run with ``batching="full"``, in dense float32 copies of the cells × genes matrix.
    dense_copies: ClassVar[float] = 20
    #: The same with ``batching="subgraph"``.
    dense_copies_subgraph: ClassVar[float] = 6
    #: On a GPU the host keeps about the dense input, the counts and the output.
    dense_copies_host: ClassVar[float] = 4
    #: Whether writing the output to a file saves one dense copy (subgraph prediction written chunk by chunk).
    streams_output: ClassVar[bool] = False
    #: What the network predicts for ``output="denoised"``: ``"counts"`` (expected counts at the median library)
    #: or ``"layer"`` (values on the input layer's scale); see :func:`~scvgae_sc.tl._output.denoise_scale`.
    denoised_source: ClassVar[str] = "layer"
    #: Above this many cells, ``batching="auto"`` trains on subgraphs; with ``None`` only the memory budget decides.
    subgraph_min_cells: ClassVar[int | None] = None
    #: Position of the method in listings (:meth:`methods`).
    listing_order: ClassVar[int] = 100

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.method:
            _REGISTRY[cls.method] = cls

    @staticmethod
    def registered(method: str) -> type[ImputationModel]:
        """The model class of ``method``.

        Raises
        ------
        ValueError
            For a method that no class is registered under.
        """
        if method not in _REGISTRY:
            raise ValueError(f"method must be one of {ImputationModel.methods()}, got {method!r}.")
        return _REGISTRY[method]

    @staticmethod
    def methods() -> tuple[str, ...]:
        """The registered method names."""
        return tuple(sorted(_REGISTRY, key=lambda m: (_REGISTRY[m].listing_order, m)))

    def __new__(cls, *args: Any, **kwargs: Any) -> ImputationModel:
        if not cls.method:
            raise TypeError("ImputationModel is the base class; use ImputationModel.registered(method) or load().")
        return super().__new__(cls)

    def __init__(
        self,
        adata: AnnData,
        *,
        layer: str | None = NORMALIZED,
        counts_layer: str = COUNTS,
        graph_key: str | None = None,
        batch_key: str | None = None,
        options: MethodOptions | None = None,
        **option_kwargs: Any,
    ) -> None:
        check_adata(adata, min_obs=2)  # BatchNorm cannot train on one cell
        self.options = self.make_options(options, **option_kwargs)
        self.adata: AnnData | None = adata
        self._inputs: dict[str, Any] | None = read_inputs(adata, layer, counts_layer, graph_key, batch_key)
        self.module: Any = None
        self.config: dict[str, Any] = {
            "layer": layer,
            "obs_names": [str(x) for x in adata.obs_names],
            "var_names": [str(x) for x in adata.var_names],
        }
        self.graph: sparse.csr_matrix | None = None
        self.history: dict[str, np.ndarray] = {}
        self._result: ImputeResult | None = None
        self._runtime, self._start = 0.0, None

    @classmethod
    def make_options(cls, options: MethodOptions | None = None, **option_kwargs: Any) -> MethodOptions:
        """The method's typed options: ``options`` (``None``: the defaults) with ``option_kwargs`` changed.

        Options given in ``option_kwargs`` that the chosen ``output`` does not read are named in a warning.

        Raises
        ------
        TypeError
            For options of another method, or an unknown option.
        ValueError
            For a value out of its range or choices.
        """
        if options is None:
            options = cls.options_class.from_kwargs(**option_kwargs)
        elif not isinstance(options, cls.options_class):
            raise TypeError(f"options must be {cls.options_class.__name__} or None, got {type(options).__name__}.")
        elif option_kwargs:
            options = options.replace(**option_kwargs)
        if unused := options.unused(option_kwargs):
            logg.warning(
                f"{', '.join(unused)}: not used with output={options.as_dict()['output']!r} (see "
                f"tl.{cls.method}_options()); ignored"
            )
        return options

    @classmethod
    def _trained(
        cls, module: Any, config: dict[str, Any], *, graph: sparse.csr_matrix, history: dict[str, np.ndarray] | None
    ) -> ImputationModel:
        """A trained model from its parts (as :meth:`load` reads them), without an AnnData."""
        model = cls.__new__(cls)
        model.options, model.adata, model._inputs, model._result = None, None, None, None
        model._set_trained(module, config, graph, history)
        return model

    def _set_trained(self, module: Any, config: dict[str, Any], graph, history) -> None:
        self.module = module.cpu()
        self.module.eval()
        self.config = dict(config)
        self.graph = sparse.csr_matrix(graph, dtype=np.float32)
        self.history = {k: np.asarray(v) for k, v in (history or {}).items()}

    @property
    def is_trained(self) -> bool:
        """Whether the model has been trained (or loaded): :meth:`predict` and :meth:`save` need it."""
        return self.graph is not None

    def _require_trained(self, what: str) -> None:
        if not self.is_trained:
            raise RuntimeError(f"The model is not trained yet; call model.train() before {what}.")

    # ------------------------------------------------------------------ the method's parts (subclasses)
    @classmethod
    def build_module(cls, module_kwargs: dict[str, Any]) -> Any:
        """The untrained torch module from its constructor arguments (as saved in ``model.json``)."""
        raise NotImplementedError

    def _fit(
        self, options: MethodOptions, *, max_epochs: int | None, device: Any, random_state: int | None, out
    ) -> ImputeResult:
        """Train on the inputs read by the constructor with ``options`` (``batching`` decided) and impute.

        ``out``: a preallocated float32 array for the imputed matrix (methods with :attr:`streams_output`).
        """
        raise NotImplementedError

    def _predict_arrays(self, X, dev, adata: AnnData | None = None) -> tuple[np.ndarray, np.ndarray]:
        """``(imputed, latent)`` of the input layer ``X`` with the module on ``dev``.

        ``adata`` holds the cells, for a method whose prediction reads more than the input layer.
        """
        raise NotImplementedError

    def _evidence(self, adata: AnnData | None) -> Evidence:
        """The cells' own counts (the training's ``counts_layer``) for the denoised output's posterior."""
        name, batch_key = self.params.get("counts_layer"), self.params.get("batch_key")
        if adata is None or name not in adata.layers:
            raise ValueError(
                f"This model's denoised output combines its prediction with each cell's own counts: "
                f"adata.layers[{name!r}] (the counts it was trained with) is needed to predict."
            )
        counts = adata.layers[name]
        check_counts(counts, f"adata.layers[{name!r}]")
        batch = adata.obs[batch_key].to_numpy() if batch_key else None
        return Evidence(counts, size_factors(counts, batch))

    # ------------------------------------------------------------------ memory and batching
    @classmethod
    def memory(
        cls, n_obs: int, n_vars: int, device_type: str = "cpu", *, batching: str = "full", to_file: bool = False
    ) -> float:
        """Estimated peak host memory (bytes) of training and imputing ``n_obs`` × ``n_vars``."""
        if batching == "subgraph":
            copies = cls.dense_copies_subgraph - (1 if to_file else 0)
        else:
            copies = cls.dense_copies if device_type == "cpu" else cls.dense_copies_host
        return float(copies) * n_obs * n_vars * 4

    @classmethod
    def resolve_batching(cls, requested: str, n_obs: int, n_vars: int, device_type: str, budget: float | None) -> str:
        """Resolve ``batching="auto"``: subgraphs when full batch does not fit ``budget`` or the graph is large."""
        if requested != "auto":
            return requested
        need = cls.memory(n_obs, n_vars, device_type)
        if budget is not None and need > budget:
            logg.info(
                f"    batching='subgraph': full-batch training would need about {need / 1e9:.1f} GB, more than the "
                f"{budget / 1e9:.1f} GB budget"
            )
            return "subgraph"
        if cls.subgraph_min_cells is not None and n_obs > cls.subgraph_min_cells:
            logg.info(
                f"    batching='subgraph': {n_obs} cells > {cls.subgraph_min_cells} (a full-graph encoder per batch "
                "would cost n_cells² / batch_size per epoch)"
            )
            return "subgraph"
        logg.info(f"    batching='full': about {need / 1e9:.2f} GB fits the budget")
        return "full"

    # ------------------------------------------------------------------ properties
    @property
    def n_obs(self) -> int:
        """Number of cells the model was trained on."""
        return len(self.config["obs_names"])

    @property
    def n_vars(self) -> int:
        """Number of genes the model was trained on."""
        return len(self.config["var_names"])

    @property
    def layer(self) -> str | None:
        """The input layer the model was trained on (``None`` for ``X``)."""
        return self.config["layer"]

    @property
    def params(self) -> dict[str, Any]:
        """The training parameters (as in ``adata.uns[key]['params']``)."""
        return dict(self.config["params"])

    def __repr__(self) -> str:
        trained = f"trained with scvgae-sc {self.config.get('version', '?')}" if self.is_trained else "not trained"
        return (
            f"ImputationModel(method={self.method!r}, n_obs={self.n_obs}, n_vars={self.n_vars}, "
            f"layer={self.layer!r}, {trained})"
        )

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        *,
        device: str = "auto",
        random_state: int | None = 0,
        max_memory: float | None = None,
    ) -> None:
        """Train the model on the cells it was built on; afterwards :meth:`predict`, :meth:`save` ... work.

        Under ``torchrun`` the processes train data-parallel, as with :func:`scvgae_sc.tl.impute`. Training again
        starts from a new network.

        Parameters
        ----------
        max_epochs
            Maximum training epochs (``None``: the method's default for the chosen ``output``).
        device
            ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ...
        random_state
            Seed of everything random (graph, weights, dropout, splits, masks). CPU runs with the same seed give
            identical results.
        max_memory
            Bytes of memory the run may take (``None``: the memory available); see :func:`scvgae_sc.tl.impute`.
            It also decides ``batching="auto"``.

        Raises
        ------
        ValueError
            When the run would not fit ``max_memory``, or the options cannot train on these data.
        """
        self._train(max_epochs, device=device, random_state=random_state, max_memory=max_memory)
        self._result = None  # the training's own imputation is written by tl.impute only

    def _train(
        self,
        max_epochs: int | None,
        *,
        device: str,
        random_state: int | None,
        max_memory: float | None,
        filename: str | os.PathLike[str] | None = None,
    ) -> None:
        """:meth:`train`, keeping the training's imputation of its cells for :meth:`_write_result`."""
        if self._inputs is None:
            raise RuntimeError("A loaded model cannot be trained again; build a new one from the AnnData.")
        check_max_epochs(max_epochs)
        run = self._prepare_run(device, random_state, filename, max_memory)
        start = logg.info(f"imputing with {self.method!r}")
        t0 = time.perf_counter()
        result = self._train_run(run, max_epochs)
        self._runtime = time.perf_counter() - t0
        self._start = start
        params = self._run_params(result, run["params"], max_epochs)
        state = result.model_state
        if state is None:  # pragma: no cover - every method fills it
            raise ValueError(f"The {self.method!r} training returned no model state.")
        config = {
            "module_kwargs": dict(state["module_kwargs"]),
            "predict_kwargs": dict(state["predict_kwargs"]),
            "layer": self.layer,
            "params": params,
            "graph_info": params_for_uns(result.graph_info),
            "obs_names": self.config["obs_names"],
            "var_names": self.config["var_names"],
            "trained_on": result.device,
            "denoise": state.get("denoise"),
        }
        config["version"] = __version__
        self._set_trained(state["module"], config, result.graph, result.history)
        self._result = result

    def _prepare_run(self, device, random_state, filename, max_memory) -> dict[str, Any]:
        """Device, process group, seed, ``batching="auto"`` and the memory check, before anything is allocated."""
        from ...nn import init_from_env, world_size

        n_obs, n_vars = self._inputs["X"].shape
        dev = init_from_env(device)  # under torchrun: joins the process group; this rank's device
        n_ranks = world_size()
        run_seed = random_state
        if n_ranks > 1 and random_state is None:  # every rank must draw the same graph, masks, batches and splits
            from ...nn._distributed import shared_seed

            run_seed = shared_seed()
        path = _check_filename(filename, n_ranks)
        budget = _utils.memory_budget(max_memory)
        batching = self.resolve_batching(self.options.training.batching, n_obs, n_vars, dev.type, budget)
        options = self.options.replace(batching=batching)
        to_file = path is not None and batching == "subgraph" and self.streams_output
        hint = ""
        if self.streams_output and batching == "subgraph" and path is None:
            hint = " Or pass filename= to write the imputed matrix to disk instead of memory (one dense copy less)."
        check_memory(
            self.memory(n_obs, n_vars, dev.type, batching=batching, to_file=to_file),
            what=f"Imputing {n_obs} cells × {n_vars} genes with {self.method!r} on {dev.type} (batching={batching!r})",
            max_memory=max_memory,
            hint=hint,
        )
        params = {"random_state": random_state, "filename": None if path is None else str(path), "world_size": n_ranks}
        return {"device": dev, "seed": run_seed, "options": options, "path": path, "to_file": to_file, "params": params}

    def _train_run(self, run: dict[str, Any], max_epochs: int | None) -> ImputeResult:
        """Train and impute; the output goes to ``run["path"]`` when given (removed again on an error)."""
        path, inputs = run["path"], self._inputs
        shape = inputs["X"].shape
        denoise = None
        if run["options"].output.output == "denoised":  # refused here, before training, if the layer cannot take it
            denoise = denoise_scale(inputs["counts"], inputs["normalization"], source=self.denoised_source)
        out = None
        if run["to_file"]:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
        try:
            result = self._fit(
                run["options"], max_epochs=max_epochs, device=run["device"], random_state=run["seed"], out=out
            )
        except BaseException:
            if out is not None:
                del out
                path.unlink(missing_ok=True)
            raise
        if path is not None and out is None:
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
            out[...] = result.imputed
            result.imputed = out
        if denoise is not None:
            finish_denoised(result.imputed, denoise)
            result.model_state["denoise"] = denoise
        if out is not None:
            out.flush()
            result.imputed = out.view(np.ndarray)
        return result

    def _run_params(self, result: ImputeResult, run_params: dict[str, Any], max_epochs: int | None) -> dict[str, Any]:
        """The flat ``params`` of ``uns[key]`` (and of the saved model)."""
        method_params = dict(result.params)
        inputs = self._inputs["params"]
        if inputs["batch_key"] is None:
            method_params.pop("batch_mode", None)
        return params_for_uns(
            {
                "method": self.method,
                "layer": inputs["layer"],
                "counts_layer": inputs["counts_layer"],
                "graph_key": inputs["graph_key"],
                "max_epochs": max_epochs,
                "random_state": run_params["random_state"],
                "filename": run_params["filename"],
                "batch_key": inputs["batch_key"],
                "world_size": run_params["world_size"],
                **method_params,
            }
        )

    def _write_result(self, adata: AnnData, key: str) -> None:
        """Write the training's imputation of its cells into ``adata`` (what :func:`~scvgae_sc.tl.impute` writes)."""
        result, self._result = self._result, None
        if result is None:  # pragma: no cover - tl.impute trains first
            raise RuntimeError("No training result to write; train the model first.")
        adata.layers[key] = result.imputed
        adata.obsm[latent_key(key)] = result.latent
        adata.obsp[connectivities_key(key)] = result.graph
        adata.uns[key] = {
            "params": self.config["params"],
            "history": {k: np.asarray(v) for k, v in result.history.items()},
            "graph": params_for_uns(result.graph_info),
            "device": result.device,
            "runtime_s": float(self._runtime),
            "version": __version__,
        }
        logg.info(
            f"    finished ({self._runtime:.1f} s on {result.device})",
            time=self._start,
            deep=f"added {key!r} (adata.layers), {latent_key(key)!r} (adata.obsm), "
            f"{connectivities_key(key)!r} (adata.obsp), {key!r} (adata.uns)",
        )

    # ------------------------------------------------------------------ save / load
    def save(self, path: PathLike[str] | str, *, overwrite: bool = False) -> None:
        """Write the model to the folder ``path`` (created; written to a temporary folder first, then renamed).

        Parameters
        ----------
        path
            Folder to write (``model.json``, ``weights.pt``, ``graph.npz``, ``history.npz``).
        overwrite
            Replace an existing ``path``; otherwise an existing, non-empty folder is refused.
        """
        import torch

        self._require_trained("save()")
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise ValueError(f"{str(path)!r} exists and is not a folder.")
        if path.is_dir() and any(path.iterdir()) and not overwrite:
            raise ValueError(f"{str(path)!r} exists and is not empty; pass overwrite=True to replace it.")
        if not path.parent.is_dir():
            raise ValueError(f"The folder {str(path.parent)!r} does not exist.")
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        try:
            config = {
                "format_version": FORMAT_VERSION,
                "package_version": __version__,
                "method": self.method,
                "module_class": self.module_class,
                "n_obs": self.n_obs,
                "n_vars": self.n_vars,
                **self.config,
            }
            (tmp / _FILES["config"]).write_text(json.dumps(config, default=_json_default, indent=1))
            torch.save({k: v.detach().cpu() for k, v in self.module.state_dict().items()}, tmp / _FILES["weights"])
            sparse.save_npz(tmp / _FILES["graph"], self.graph, compressed=False)
            np.savez(tmp / _FILES["history"], **self.history)
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        logg.info(f"saved {self!r} to {str(path)!r}")

    @classmethod
    def load(cls, path: PathLike[str] | str) -> ImputationModel:
        """Read a model written by :meth:`save`.

        Parameters
        ----------
        path
            The model's folder.

        Returns
        -------
        The model (on CPU; :meth:`predict` moves it to the device asked for).

        Raises
        ------
        ValueError
            When ``path`` is not a saved model or was written in a newer format than this version reads.
        """
        import torch

        path = Path(path)
        config_file = path / _FILES["config"]
        if not config_file.is_file():
            raise ValueError(f"{str(path)!r} is not a saved scvgae-sc model (no {_FILES['config']} in it).")
        try:
            config = json.loads(config_file.read_text())
            fmt = _version_tuple(config["format_version"])
        except (json.JSONDecodeError, KeyError, ValueError) as err:
            raise ValueError(f"{str(config_file)!r} is not a valid scvgae-sc model description: {err}") from err
        if fmt > _version_tuple(FORMAT_VERSION):
            raise ValueError(
                f"The model in {str(path)!r} was saved in format {config['format_version']} by scvgae-sc "
                f"{config.get('package_version', '?')}; this scvgae-sc ({__version__}) reads format {FORMAT_VERSION} "
                "and older. Upgrade scvgae-sc to load it."
            )
        saved_by = config.get("package_version")
        if saved_by != __version__:
            warnings.warn(
                f"The model in {str(path)!r} was saved by scvgae-sc {saved_by}, this is {__version__}; predictions "
                "may differ if the model code changed in between.",
                UserWarning,
                stacklevel=2,
            )
        method = config.pop("method", None)
        if method not in _REGISTRY:
            raise ValueError(f"{str(config_file)!r} names an unknown method {method!r}.")
        model_cls = _REGISTRY[method]
        for key in ("format_version", "package_version", "module_class", "n_obs", "n_vars"):
            config.pop(key, None)
        try:
            module = model_cls.build_module(config["module_kwargs"])
            state = torch.load(path / _FILES["weights"], map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        except (KeyError, TypeError, RuntimeError) as err:
            raise ValueError(
                f"The {method!r} model in {str(path)!r} (saved by scvgae-sc {saved_by}) cannot be rebuilt by this "
                f"scvgae-sc ({__version__}): {err}. Train it again with `scvgae_sc.tl.impute(return_model=True)`."
            ) from err
        graph = sparse.load_npz(path / _FILES["graph"])
        history_file = path / _FILES["history"]
        history = dict(np.load(history_file)) if history_file.is_file() else {}
        return model_cls._trained(module, config, graph=graph, history=history)

    # ------------------------------------------------------------------ apply
    def _check_cells(self, adata: AnnData) -> None:
        if adata.n_obs != self.n_obs or adata.n_vars != self.n_vars:
            raise ValueError(
                f"The model was trained on {self.n_obs} cells × {self.n_vars} genes but adata has "
                f"{adata.n_obs} × {adata.n_vars}. A trained model applies to the cells and genes it was trained on "
                "(the graph and per-cell terms are part of it); train a new one with `scvgae_sc.tl.impute`."
            )
        for axis, names in (("var_names", adata.var_names), ("obs_names", adata.obs_names)):
            saved = self.config[axis]
            differ = np.flatnonzero(
                np.asarray([str(x) for x in names], dtype=object) != np.asarray(saved, dtype=object)
            )
            if differ.size:
                i = int(differ[0])
                raise ValueError(
                    f"adata.{axis} differ from the model's at {differ.size} position(s) (first: {str(names[i])!r} "
                    f"vs {saved[i]!r} at {i}). Apply the model to the cells and genes it was trained on, in the "
                    "same order."
                )

    def _run(self, adata: AnnData | None, device: str, max_memory: float | None):
        from ...nn import resolve_device

        self._require_trained("predicting")
        if adata is None:
            if self.adata is None:
                raise ValueError("This model was loaded from disk: pass the AnnData of the cells it was trained on.")
            adata = self.adata
        check_adata(adata)
        self._check_cells(adata)
        layer = self.layer
        X = get_layer(adata, layer)
        lname = f"adata.layers[{layer!r}]" if layer is not None else "adata.X"
        check_nonnegative(X, lname)
        dev = resolve_device(device)
        check_memory(
            8.0 * adata.n_obs * adata.n_vars * 4,
            what=f"predicting {adata.n_obs} × {adata.n_vars} with a {self.method} model",
            max_memory=max_memory,
        )
        module = self.module.to(dev)
        try:
            imputed, latent = self._predict_arrays(X, dev, adata)
            if self.config.get("denoise"):
                finish_denoised(imputed, self.config["denoise"])
        finally:
            self.module = module.cpu()
            if hasattr(self.module, "reset_cache"):
                self.module.reset_cache()
        return imputed, latent, str(dev)

    def predict(
        self,
        adata: AnnData | None = None,
        *,
        device: str = "auto",
        max_memory: float | None = None,
    ) -> np.ndarray:
        """The imputed matrix of ``adata``'s cells (dense float32, the shape and scale of the input layer).

        Reads the layer the model was trained on (:attr:`layer`).

        Parameters
        ----------
        adata
            The cells and genes the model was trained on (checked by name and order); ``None``: the AnnData the
            model was built on (:attr:`adata`; a loaded model has none).
        device
            ``"auto"``, ``"cpu"``, ``"cuda"``, ... On CPU the result equals the training run's exactly.
        max_memory
            Bytes the dense copies may take (``None``: the memory available).

        Returns
        -------
        The imputed matrix; ``adata`` is not changed.
        """
        imputed, _, _ = self._run(adata, device, max_memory)
        return imputed

    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        *,
        device: str = "auto",
        max_memory: float | None = None,
    ) -> np.ndarray:
        """The latent representation of ``adata``'s cells (what :func:`~scvgae_sc.tl.impute` writes to ``obsm``).

        Parameters
        ----------
        adata
            The cells and genes the model was trained on (checked by name and order); ``None``: the AnnData the
            model was built on (:attr:`adata`; a loaded model has none).
        device
            ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        max_memory
            Bytes the dense copies may take (``None``: the memory available).

        Returns
        -------
        ``(n_obs, n_latent)`` float32 array; ``adata`` is not changed.
        """
        _, latent, _ = self._run(adata, device, max_memory)
        return latent

    def impute(
        self,
        adata: AnnData,
        *,
        key_added: str | None = None,
        device: str = "auto",
        max_memory: float | None = None,
        copy: bool = False,
    ) -> AnnData | None:
        """Write this model's imputation into ``adata`` as :func:`scvgae_sc.tl.impute` does.

        Parameters
        ----------
        adata
            The cells and genes the model was trained on (checked by name and order).
        key_added
            Where results go; defaults to the method's name.
        device
            ``"auto"``, ``"cpu"``, ``"cuda"``, ... On CPU the result equals the training run's exactly.
        max_memory
            Bytes the dense copies may take (``None``: the memory available).
        copy
            Return a new AnnData instead of writing into ``adata``.

        Returns
        -------
        Returns `None` if `copy=False`, else a new :class:`~anndata.AnnData`. Sets ``layers[key]``,
        ``obsm[f'X_{key}']``, ``obsp[f'{key}_connectivities']`` and ``uns[key]`` (training ``params`` and
        ``history``, ``graph``, the ``device`` and ``runtime_s`` of this prediction, ``version``, and
        ``from_model``: the package version that trained the model).
        """
        check_adata(adata, inplace=not copy)
        key = self.method if key_added is None else key_added
        if not isinstance(key, str) or not key:
            raise TypeError(f"key_added must be a non-empty str or None, got {key_added!r}.")
        t0 = time.perf_counter()
        imputed, latent, dev = self._run(adata, device, max_memory)
        runtime = time.perf_counter() - t0

        if copy:
            adata = adata.copy()
        adata.layers[key] = imputed
        adata.obsm[latent_key(key)] = latent
        adata.obsp[connectivities_key(key)] = self.graph.copy()
        adata.uns[key] = {
            "params": params_for_uns(self.params),
            "history": dict(self.history),
            "graph": params_for_uns(self.config.get("graph_info", {})),
            "device": dev,
            "runtime_s": float(runtime),
            "version": __version__,
            "from_model": str(self.config.get("version", "")),
        }
        return adata if copy else None
