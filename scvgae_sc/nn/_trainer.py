"""A small, general training loop shared by every model: Adam, history, early stopping, seeding, bf16, DDP."""

from __future__ import annotations

import math
import random
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import nullcontext
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ._device import resolve_device

__all__ = ["Trainer", "resolve_device"]

T = TypeVar("T")
Components = Mapping[str, torch.Tensor]
StepResult = Components | torch.Tensor | Iterable[Components | torch.Tensor]

_PRECISIONS = {"32": None, "32-true": None, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16}


def fast_bf16(device: torch.device) -> bool:
    """Whether ``device`` multiplies bfloat16 matrices in hardware (faster than float32 there).

    CUDA: :func:`torch.cuda.is_bf16_supported` (Ampere and newer). CPU: the AVX-512 BF16 or AMX instructions
    (recent Intel Xeon and AMD EPYC); elsewhere bfloat16 is emulated and slower than float32. MPS: no.
    """
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        cpu = getattr(torch, "cpu", None)
        checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
        for name in checks:
            check = getattr(cpu, name, None)
            try:
                if check is not None and check():
                    return True
            except Exception:  # a private probe: absent or failing means "don't know"
                continue
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """Turn a ``precision`` argument into ``"32"`` or ``"bf16"``.

    ``"auto"`` is ``"bf16"`` where the device has fast bfloat16 arithmetic (:func:`fast_bf16`), else ``"32"``.
    """
    if precision == "auto":
        return "bf16" if fast_bf16(device) else "32"
    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be 'auto', '32' or 'bf16', got {precision!r}.")
    return precision


def _seed(random_state: int) -> None:
    random.seed(random_state)
    np.random.seed(random_state % 2**32)
    torch.manual_seed(random_state)


#: Returned through DDP's forward when a training step's generator is exhausted.
_DONE = object()


def _as_components(result: Components | torch.Tensor) -> Components:
    if isinstance(result, torch.Tensor):
        return {"loss": result}
    if not isinstance(result, Mapping) or "loss" not in result:
        raise TypeError("A training step must return a tensor or a dict of scalar tensors with a 'loss' key.")
    return result


class Trainer:
    """Full-batch or mini-batch training of a torch module with Adam.

    The trainer knows nothing about the model: the caller passes a ``train_step`` that computes the loss,
    so the same loop serves scVGAE, GNNImpute, mini-batch and data-parallel training.

    **Data-parallel training.** When a :mod:`torch.distributed` process group with more than one process is
    initialized (e.g. by :func:`~scvgae_sc.nn.init_from_env` under ``torchrun``), :meth:`fit` wraps the module in
    :class:`~torch.nn.parallel.DistributedDataParallel` (DDP): construction broadcasts rank 0's parameters and
    buffers, so every rank starts equal, and the gradients of every optimizer step are averaged across ranks in
    the backward pass (bucketed all-reduces overlapping the computation). Training steps may call any pieces of the
    model (``encoder_input``, ``decode``, ...) rather than its ``forward``: DDP only prepares its reduction for
    what runs inside the wrapper's forward, so the trainer runs each step — the ``train_step`` call and each item
    of its generator — as the forward of a thin wrapper module. Each rank's ``train_step`` must produce its own
    share of the data and **the same number of batches per epoch on every rank**, and an iterable step must be a
    lazy generator (each item computed when it is requested). The loss components in the history and the
    validation loss are averaged across ranks, so histories and early-stopping decisions are the same on every
    rank. BatchNorm running statistics are each rank's own during training and are averaged across ranks before
    each validation and at the end of :meth:`fit` (evaluation uses them). Dropout draws from each rank's torch
    generator, seeded alike on every rank. Progress bars show on rank 0 only.

    Parameters
    ----------
    module
        The model; moved to ``device`` on construction. May be a ``DistributedDataParallel`` wrapper.
    lr, weight_decay
        Adam's learning rate and (L2) weight decay.
    max_epochs
        Upper bound on the number of epochs.
    device
        See :func:`resolve_device`. Data is the caller's: move it to :attr:`device` in ``train_step``.
    early_stopping
        Stop after ``patience`` epochs without an improvement larger than ``min_delta`` of the monitored loss
        (``val_loss`` when a ``val_step`` is given, else the training ``loss``), then restore the best weights.
    patience, min_delta
        Early-stopping settings.
    progress_bar
        Show a tqdm progress bar with the current loss.
    random_state
        Seeds Python, NumPy and torch at the start of :meth:`fit` (``None``: leave them alone). On CPU two fits
        of identically initialized modules with the same seed are bit-identical; on CUDA, scatter operations
        are not deterministic. Weight initialization happens when the module is built: seed before that.
    precision
        ``"32"`` (float32) or ``"bf16"`` (forward and loss under :func:`torch.autocast` with bfloat16, on CPU
        or CUDA; weights, gradients and the optimizer stay float32); ``"auto"``: ``"bf16"`` where the device
        has fast bfloat16 arithmetic (see :func:`resolve_precision`). :attr:`precision` holds the choice.
    gradient_clip_val
        Clip the gradients' global norm to this value (``None``: no clipping).
    restore_best_weights
        Load the best epoch's weights at the end; defaults to ``early_stopping``.
    accumulate_grad_batches
        Step the optimizer every ``k`` batches yielded by the training step, with the summed gradients of
        ``loss / k`` (the mean gradient of the ``k`` batches); an epoch's last, incomplete group is stepped with the
        mean over its batches (groups do not span epochs). One process with ``k`` consecutive batches per step
        follows the same trajectory as ``k`` processes each given one of them (up to the order of floating-point
        sums). Under DDP the gradients are reduced across ranks once per group.

    Attributes
    ----------
    history
        The history of the last :meth:`fit` (also returned by it), kept even when training is interrupted.
    """

    def __init__(
        self,
        module: nn.Module,
        *,
        lr: float,
        max_epochs: int,
        weight_decay: float = 0.0,
        device: str | torch.device = "auto",
        early_stopping: bool = False,
        patience: int = 20,
        min_delta: float = 0.0,
        progress_bar: bool = True,
        random_state: int | None = 0,
        precision: Literal["auto", "32", "bf16"] = "32",
        gradient_clip_val: float | None = None,
        restore_best_weights: bool | None = None,
        accumulate_grad_batches: int = 1,
    ) -> None:
        if max_epochs < 0:
            raise ValueError(f"max_epochs must be >= 0, got {max_epochs}.")
        if patience < 1:
            raise ValueError(f"patience must be >= 1, got {patience}.")
        if (
            not isinstance(accumulate_grad_batches, int | np.integer)
            or isinstance(accumulate_grad_batches, bool)
            or accumulate_grad_batches < 1
        ):
            raise ValueError(f"accumulate_grad_batches must be an integer >= 1, got {accumulate_grad_batches!r}.")
        self.device = resolve_device(device)
        self.module = module.to(self.device)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.max_epochs = int(max_epochs)
        self.early_stopping = bool(early_stopping)
        self.patience = int(patience)
        self.min_delta = float(min_delta)
        self.progress_bar = bool(progress_bar)
        self.random_state = random_state
        self.precision = resolve_precision(precision, self.device)
        self.gradient_clip_val = gradient_clip_val
        self.restore_best_weights = early_stopping if restore_best_weights is None else bool(restore_best_weights)
        self.accumulate_grad_batches = int(accumulate_grad_batches)
        self.optimizer = torch.optim.Adam(self.module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        self.history: dict[str, Any] = {}
        #: The DistributedDataParallel wrapper the steps run through (made by the first distributed :meth:`fit`).
        self._ddp: nn.parallel.DistributedDataParallel | None = None
        self._distributed = False

    # ------------------------------------------------------------------ helpers
    def autocast(self) -> Any:
        """Return the autocast context of the chosen precision (a no-op for ``"32"``)."""
        dtype = _PRECISIONS[self.precision]
        if dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def predict(self, fn: Callable[[nn.Module], T], *, autocast: bool = False) -> T:
        """``fn(module)`` in evaluation mode without gradients; the module's mode is restored afterwards.

        ``autocast=True`` also applies the training precision (float32 otherwise).
        """
        was_training = self.module.training
        self.module.eval()
        try:
            with torch.no_grad(), self.autocast() if autocast else nullcontext():
                return fn(self.module)
        finally:
            self.module.train(was_training)

    def _state(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.module.state_dict().items()}

    def _sync_owner(self) -> nn.parallel.DistributedDataParallel | None:
        """The DDP object whose ``no_sync`` governs gradient reduction (ours, or a wrapper the caller passed)."""
        if not self._distributed:
            return None
        if isinstance(self.module, nn.parallel.DistributedDataParallel):
            return self.module
        return self._ddp

    def _forward(self, fn: Callable[[nn.Module], Any]) -> Any:
        """``fn(module)`` under the precision's autocast, as the forward of the DDP wrapper when data-parallel."""
        with self.autocast():
            if self._distributed and self._ddp is not None:
                return self._ddp(fn)
            return fn(self.module)

    def _optimizer_step(self, pending: int, synced: bool) -> None:
        """Step with the gradients of ``pending`` accumulated batches (reduced across ranks unless ``synced``)."""
        k = self.accumulate_grad_batches
        if self._distributed and not synced:
            from ._distributed import all_reduce_gradients

            all_reduce_gradients(self.module.parameters())
        if pending < k:  # an incomplete group at the end of the epoch: the mean over its batches
            for p in self.module.parameters():
                if p.grad is not None:
                    p.grad.mul_(k / pending)
        if self.gradient_clip_val is not None:
            nn.utils.clip_grad_norm_(self.module.parameters(), self.gradient_clip_val)
        self.optimizer.step()

    def _train_epoch(self, train_step: Callable[[nn.Module, int], StepResult], epoch: int) -> dict[str, float]:
        sums: dict[str, torch.Tensor] = {}
        n_steps = 0
        pending = 0  # batches whose gradients wait for the optimizer step
        k = self.accumulate_grad_batches
        ddp = self._sync_owner()

        def sync_context() -> Any:
            # DDP reduces the gradients in the backward pass of the batch that completes a group of k
            return ddp.no_sync() if ddp is not None and pending + 1 < k else nullcontext()

        def backward(result: Components | torch.Tensor) -> None:
            nonlocal n_steps, pending
            components = _as_components(result)
            if pending == 0:
                self.optimizer.zero_grad(set_to_none=True)
            loss = components["loss"]
            (loss / k if k > 1 else loss).backward()
            pending += 1
            for name, v in components.items():
                v = v.detach().float()
                sums[name] = sums[name] + v if name in sums else v
            n_steps += 1

        def maybe_step() -> None:
            nonlocal pending
            if pending == k:
                self._optimizer_step(pending, synced=True)
                pending = 0

        with sync_context():
            result = self._forward(lambda module: train_step(module, epoch))
            single = isinstance(result, torch.Tensor | Mapping)
            if single:
                backward(result)
        if single:
            maybe_step()
        else:
            iterator: Iterator = iter(result)
            while True:
                with sync_context():
                    batch = self._forward(lambda module: next(iterator, _DONE))
                    if batch is _DONE:
                        break
                    backward(batch)
                maybe_step()
        if pending:
            self._optimizer_step(pending, synced=False)
        if self._distributed:
            return self._reduce_epoch(sums, n_steps, epoch)
        if n_steps == 0:
            raise ValueError(f"train_step yielded no batch in epoch {epoch}.")
        return {name: float(v) / n_steps for name, v in sums.items()}

    def _reduce_epoch(self, sums: dict[str, torch.Tensor], n_steps: int, epoch: int) -> dict[str, float]:
        """Means of the loss components over the batches of all ranks (one all-reduce)."""
        from ._distributed import world_size

        names = sorted(sums)
        values = [sums[name].double().to(self.device) for name in names]
        counts = torch.tensor([float(n_steps), 1.0], dtype=torch.float64, device=self.device)
        totals = torch.cat([torch.stack(values), counts]) if values else counts
        torch.distributed.all_reduce(totals, op=torch.distributed.ReduceOp.SUM)
        total_steps, n_ranks = float(totals[-2]), int(totals[-1])
        if total_steps != n_steps * n_ranks or n_ranks != world_size():
            raise RuntimeError(
                f"Ranks ran different numbers of batches in epoch {epoch} ({n_steps} here, {total_steps:g} in all "
                f"over {n_ranks} ranks): every rank's train_step must yield the same number of batches."
            )
        if n_steps == 0:
            raise ValueError(f"train_step yielded no batch in epoch {epoch}.")
        return {name: float(totals[i]) / total_steps for i, name in enumerate(names)}

    def _validate(self, val_step: Callable[[nn.Module], Components | torch.Tensor]) -> dict[str, float]:
        if self._distributed:
            from ._distributed import average_buffers

            average_buffers(self.module)
        self.module.eval()
        with torch.no_grad(), self.autocast():
            components = _as_components(val_step(self.module))
        if not self._distributed:
            return {k: float(v.detach().float()) for k, v in components.items()}
        from ._distributed import all_reduce_mean

        names = sorted(components)
        values = all_reduce_mean(torch.stack([components[k].detach().double().to(self.device) for k in names]))
        return {k: float(values[i]) for i, k in enumerate(names)}

    # ---------------------------------------------------------------------- fit
    def fit(
        self,
        train_step: Callable[[nn.Module, int], StepResult],
        val_step: Callable[[nn.Module], Components | torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Train for up to ``max_epochs`` epochs.

        Parameters
        ----------
        train_step
            ``train_step(module, epoch)`` runs the forward pass and loss (in training mode, under the chosen
            precision) and returns either a dict of scalar tensors with a ``"loss"`` key (or the loss tensor):
            one optimizer step per epoch (full batch); or an iterable (e.g. a generator) of such dicts: one
            optimizer step per item (mini-batches), each item computed lazily after the previous step. The
            epoch's components are the means over its steps.
        val_step
            ``val_step(module)``, called after each epoch in evaluation mode without gradients, returns a dict
            with ``"loss"`` (or the loss tensor).

        Returns
        -------
        The history (also kept as :attr:`history`): for each component ``k`` of the training step a list
        ``history[k]`` of per-epoch floats, ``history[f"val_{k}"]`` for validation (``"val_loss"``),
        ``"epoch"``; and the scalars ``"monitor"`` (the key early stopping watches), ``"best_epoch"``
        (0-based, the best monitored epoch, -1 if none finished), ``"n_epochs"`` (epochs completed),
        ``"stopped_epoch"`` (last epoch run, -1 if none), ``"stopped_early"`` and ``"interrupted"``.

        Raises
        ------
        KeyboardInterrupt
            Re-raised after a clean stop: the history is kept in :attr:`history` (``"interrupted": True``) and,
            when best weights are restored (``early_stopping``), they are loaded first. The caller can then
            leave its data untouched.
        FloatingPointError
            When the loss becomes NaN or infinite (best weights restored first, when enabled).
        """
        from ._distributed import is_distributed, rank, wrap

        self._distributed = is_distributed()
        if self._distributed and self._ddp is None and not isinstance(self.module, nn.parallel.DistributedDataParallel):
            self._ddp = wrap(self.module, self.device)  # broadcasts rank 0's parameters and buffers
        if self.random_state is not None:
            _seed(int(self.random_state))
        monitor = "val_loss" if val_step is not None else "loss"
        history: dict[str, Any] = {"epoch": []}
        meta = {"monitor": monitor, "best_epoch": -1, "n_epochs": 0, "stopped_epoch": -1}
        meta.update(stopped_early=False, interrupted=False)
        self.history = history
        history.update(meta)
        best, best_state, wait = math.inf, None, 0

        def finish() -> None:
            if self.restore_best_weights and best_state is not None:
                self.module.load_state_dict(best_state)

        show = self.progress_bar and rank() == 0
        bar = tqdm(range(self.max_epochs), desc="Training", unit="epoch", disable=not show)
        try:
            for epoch in bar:
                self.module.train()
                train = self._train_epoch(train_step, epoch)
                val = self._validate(val_step) if val_step is not None else {}
                history["epoch"].append(epoch)
                for k, v in train.items():
                    history.setdefault(k, []).append(v)
                for k, v in val.items():
                    history.setdefault(f"val_{k}", []).append(v)
                history["n_epochs"] = epoch + 1
                history["stopped_epoch"] = epoch
                value = history[monitor][-1]
                if not math.isfinite(train["loss"]) or not math.isfinite(value):
                    finish()
                    name, bad = ("loss", train["loss"]) if not math.isfinite(train["loss"]) else (monitor, value)
                    raise FloatingPointError(
                        f"{name} became {bad} at epoch {epoch}. Try a lower learning rate, or precision='32'."
                    )
                if value < best - self.min_delta:
                    best, wait = value, 0
                    history["best_epoch"] = epoch
                    if self.restore_best_weights:
                        best_state = self._state()
                else:
                    wait += 1
                postfix = {"loss": f"{train['loss']:.4g}"}
                if val:
                    postfix["val_loss"] = f"{val['loss']:.4g}"
                bar.set_postfix(postfix, refresh=False)
                if self.early_stopping and wait >= self.patience:
                    history["stopped_early"] = True
                    break
        except KeyboardInterrupt:
            history["interrupted"] = True
            finish()
            warnings.warn(
                f"Training was interrupted after {history['n_epochs']} epoch(s)"
                + (" (best weights restored)." if self.restore_best_weights and best_state is not None else "."),
                RuntimeWarning,
                stacklevel=2,
            )
            raise
        finally:
            bar.close()
        finish()
        if self._distributed:
            from ._distributed import average_buffers

            average_buffers(self.module)
        return history
