"""The base class of the imputation methods: a registry by method name, training results, save / load, predict.

One subclass per method (:class:`~scvgae_sc.tl._models.SCVGAEModel`, :class:`~scvgae_sc.tl._models.GNNImputeModel`)
registers itself under its method name; :func:`scvgae_sc.tl.impute` looks the class up by that name, so a new method
is a new subclass and nothing else.
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

from ..._constants import connectivities_key, latent_key
from ..._utils import check_adata, check_counts, check_memory, check_nonnegative, get_layer, params_for_uns
from ..._version import __version__
from .._common import size_factors
from .._output import Evidence, finish_denoised
from ._options import MethodOptions

#: Version of the on-disk format (``major.minor``). A reader refuses a newer major or minor version; a minor
#: bump adds fields an older reader could ignore, a major one changes their meaning.
FORMAT_VERSION = "1.0"
_FILES = {"config": "model.json", "weights": "weights.pt", "graph": "graph.npz", "history": "history.npz"}
#: The model class of each method name (filled by subclasses of :class:`ImputationModel`).
_REGISTRY: dict[str, type[ImputationModel]] = {}


@dataclass
class ImputeResult:
    """What a method's training hands back to :func:`~scvgae_sc.tl.impute` (tensors converted to NumPy)."""

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


class ImputationModel:
    """A trained imputation model: save it, load it, and re-apply it to the cells it was trained on.

    Get one from :func:`scvgae_sc.tl.impute` with ``return_model=True``, or from disk with
    :meth:`ImputationModel.load`. Both methods are *transductive*: the model holds the cell graph and (scVGAE)
    a per-cell scale, so it applies to the same cells and genes, in the same order (checked by name), read from
    the layer it was trained on — e.g. the AnnData read back from a file, with the imputed layer dropped to save
    space. For a model trained on CPU, :meth:`predict` on CPU gives exactly the matrix :func:`~scvgae_sc.tl.impute`
    wrote (GPU kernels are not bit-reproducible: expect float32 rounding differences across devices).

    On disk a model is a folder: ``model.json`` (method, module constructor arguments, prediction settings,
    input layer, training parameters, cell and gene names, format and package versions), ``weights.pt``
    (:func:`torch.save` of the module's ``state_dict``), ``graph.npz`` (the cell graph) and ``history.npz``
    (the training curves).

    Each method is a subclass registered under its name (``ImputationModel.registered("scvgae")``); the class
    attributes below describe the method to :func:`~scvgae_sc.tl.impute` (memory estimate, ``batching="auto"``).

    Parameters
    ----------
    module
        The trained torch module (:class:`~scvgae_sc.nn.SCVGAE` or :class:`~scvgae_sc.nn.GNNImputeModule`).
    config
        Everything else needed to rebuild and apply it: ``module_kwargs``, ``predict_kwargs``, ``layer``,
        ``params``, ``graph_info``, ``obs_names``, ``var_names`` and ``version`` (the package version that
        trained it).
    graph
        The cell graph the model was trained on (CSR).
    history
        Per-epoch training curves.
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

    def __init__(
        self,
        module: Any,
        config: dict[str, Any],
        *,
        graph: sparse.csr_matrix,
        history: dict[str, np.ndarray] | None = None,
    ) -> None:
        if not self.method:
            raise TypeError("ImputationModel is the base class; use ImputationModel.registered(method) or load().")
        self.module = module.cpu()
        self.module.eval()
        self.config = dict(config)
        self.graph = sparse.csr_matrix(graph, dtype=np.float32)
        self.history = {k: np.asarray(v) for k, v in (history or {}).items()}

    # ------------------------------------------------------------------ the method's parts (subclasses)
    @classmethod
    def build_module(cls, module_kwargs: dict[str, Any]) -> Any:
        """The untrained torch module from its constructor arguments (as saved in ``model.json``)."""
        raise NotImplementedError

    @classmethod
    def train(cls, X, counts, *, options: MethodOptions, **data: Any) -> ImputeResult:
        """Train on the input layer ``X`` and ``counts`` (see the subclasses) and impute."""
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
        return (
            f"ImputationModel(method={self.method!r}, n_obs={self.n_obs}, n_vars={self.n_vars}, "
            f"layer={self.layer!r}, trained with scvgae-sc {self.config.get('version', '?')})"
        )

    # ------------------------------------------------------------------ construction
    @classmethod
    def _from_result(cls, adata: AnnData, result: ImputeResult, *, layer: str | None, params: dict) -> ImputationModel:
        state = result.model_state
        if state is None:  # pragma: no cover - every method fills it
            raise ValueError(f"The {cls.method!r} training returned no model state.")
        config = {
            "module_kwargs": dict(state["module_kwargs"]),
            "predict_kwargs": dict(state["predict_kwargs"]),
            "layer": layer,
            "params": dict(params),
            "graph_info": params_for_uns(result.graph_info),
            "obs_names": [str(x) for x in adata.obs_names],
            "var_names": [str(x) for x in adata.var_names],
            "trained_on": result.device,
            "denoise": state.get("denoise"),
        }
        config["version"] = __version__
        return cls(state["module"], config, graph=result.graph, history=result.history)

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
        return model_cls(module, config, graph=graph, history=history)

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

    def _run(self, adata: AnnData, device: str, max_memory: float | None):
        from ...nn import resolve_device

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
        adata: AnnData,
        *,
        device: str = "auto",
        max_memory: float | None = None,
    ) -> np.ndarray:
        """The imputed matrix of ``adata``'s cells (dense float32, the shape and scale of the input layer).

        Reads the layer the model was trained on (:attr:`layer`).

        Parameters
        ----------
        adata
            The cells and genes the model was trained on (checked by name and order).
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
        adata: AnnData,
        *,
        device: str = "auto",
        max_memory: float | None = None,
    ) -> np.ndarray:
        """The latent representation of ``adata``'s cells (what :func:`~scvgae_sc.tl.impute` writes to ``obsm``).

        Parameters
        ----------
        adata
            The cells and genes the model was trained on (checked by name and order).
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
