"""Data-parallel training with :mod:`torch.distributed`: the process group from torchrun's environment, helpers.

``torchrun --nproc_per_node=N script.py`` starts ``N`` copies of a script with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in their environment. :func:`init_from_env` turns that into a
process group (NCCL for CUDA devices, gloo on CPUs) and picks the rank's device; the :class:`~scvgae_sc.nn.Trainer`
then averages the gradients of every optimizer step across ranks with
:class:`~torch.nn.parallel.DistributedDataParallel`. Without ``WORLD_SIZE > 1`` nothing happens: the same script
runs as one process.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

__all__ = ["init_from_env", "is_distributed", "rank", "world_size"]


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_distributed() -> bool:
    """Whether a :mod:`torch.distributed` process group with more than one process is initialized.

    Returns
    -------
    ``True`` when training is data-parallel (world size > 1).
    """
    return _initialized() and torch.distributed.get_world_size() > 1


def rank() -> int:
    """The rank of this process in the process group (0 without one).

    Returns
    -------
    The global rank; write results (files, plots) on rank 0 only.
    """
    return torch.distributed.get_rank() if _initialized() else 0


def world_size() -> int:
    """The number of processes in the process group (1 without one).

    Returns
    -------
    The world size.
    """
    return torch.distributed.get_world_size() if _initialized() else 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError as err:
        raise ValueError(f"The environment variable {name}={value!r} is not an integer.") from err


def _rank_device(device: str | torch.device) -> torch.device:
    """``resolve_device(device)``, with ``"auto"`` / ``"cuda"`` mapped to ``cuda:LOCAL_RANK`` on a CUDA machine."""
    from ._device import resolve_device

    dev = resolve_device(device)
    if dev.type != "cuda" or dev.index is not None:
        return dev
    local = _env_int("LOCAL_RANK", rank() % max(torch.cuda.device_count(), 1))
    if local >= torch.cuda.device_count():
        raise ValueError(
            f"LOCAL_RANK={local} but this machine has {torch.cuda.device_count()} CUDA device(s); start at most "
            "that many processes per machine (torchrun --nproc_per_node)."
        )
    return torch.device("cuda", local)


def init_from_env(device: str | torch.device = "auto", *, backend: str | None = None) -> torch.device:
    """Join the process group that ``torchrun`` describes in the environment, and pick this rank's device.

    When ``WORLD_SIZE`` is greater than 1 and no process group exists yet, one is initialized from the environment
    (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``, all set by ``torchrun``). Otherwise nothing is
    initialized: a single process, or a group the caller made, is left as it is. Safe to call more than once.

    Parameters
    ----------
    device
        As for :func:`~scvgae_sc.nn.resolve_device`. In a process group, ``"auto"`` (on a CUDA machine) and
        ``"cuda"`` become ``cuda:LOCAL_RANK`` (one GPU per process); an explicit ``"cuda:N"`` or ``"cpu"`` is kept.
    backend
        Backend of a new process group; default ``"nccl"`` for CUDA devices, else ``"gloo"``.

    Returns
    -------
    This process's device (in a process group, made the current CUDA device when it is one).

    Raises
    ------
    ValueError
        For a device this machine does not have, or a ``LOCAL_RANK`` without a GPU.
    """
    from ._device import resolve_device

    env_world = _env_int("WORLD_SIZE", 1)
    if env_world <= 1 and not _initialized():
        return resolve_device(device)
    dev = _rank_device(device)
    if not _initialized():
        if not torch.distributed.is_available():
            raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed support.")
        if backend is None:
            backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs: dict[str, Any] = {"backend": backend}
        if backend == "nccl":
            kwargs["device_id"] = dev
        torch.distributed.init_process_group(**kwargs)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


# --------------------------------------------------------------------------- used by the Trainer
class _StepRunner(nn.Module):
    """Runs ``fn(module)`` as its forward, so that DistributedDataParallel sees any piece of the model.

    Our training steps call pieces of the model (``encoder_input``, ``decode``, ...) instead of its ``forward``.
    DDP only prepares its gradient reduction for computations inside the wrapper's forward; wrapping a runner that
    calls an arbitrary function of the module puts every step (a whole ``train_step`` or one item of its generator)
    inside it.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, fn):
        """Return ``fn(module)``."""
        return fn(self.module)


def wrap(module: nn.Module, device: torch.device) -> nn.parallel.DistributedDataParallel:
    """A :class:`~torch.nn.parallel.DistributedDataParallel` over a :class:`_StepRunner` of ``module``.

    Construction broadcasts rank 0's parameters and buffers, so every rank starts equal. ``find_unused_parameters``
    is on (an ablation such as ``alpha=1`` leaves a head without gradient); buffers are not broadcast in every
    forward (see :func:`average_buffers`).
    """
    import inspect

    ddp = nn.parallel.DistributedDataParallel
    kwargs: dict[str, Any] = {"find_unused_parameters": True}
    if device.type == "cuda":
        kwargs["device_ids"] = [device.index if device.index is not None else torch.cuda.current_device()]
    # buffers are synced at construction, not in every forward (torch >= 2.12 renamed the option)
    if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters:
        kwargs["forward_sync_buffers"] = False
    else:
        kwargs["broadcast_buffers"] = False
    return ddp(_StepRunner(module), **kwargs)


def all_reduce_mean(values: torch.Tensor) -> torch.Tensor:
    """The mean of ``values`` over ranks (in place; every rank gets the same result)."""
    torch.distributed.all_reduce(values, op=torch.distributed.ReduceOp.SUM)
    return values.div_(world_size())


def all_reduce_gradients(parameters: Iterable[nn.Parameter]) -> None:
    """Average the gradients of ``parameters`` over ranks with one all-reduce of their flattened concatenation.

    A parameter without gradient on this rank counts as zero. Used where DDP's own reduction did not run (the
    last, incomplete group of an epoch with ``accumulate_grad_batches > 1``).
    """
    params = [p for p in parameters if p.requires_grad]
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce_mean(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset : offset + n].view_as(p).clone()
        offset += n


def average_buffers(module: nn.Module) -> None:
    """Make the buffers (BatchNorm running statistics) equal on every rank: floats averaged, others from rank 0.

    Each rank updates its running statistics on its own batches; they are used in evaluation mode only.
    """
    for buf in module.buffers():
        if buf.is_floating_point():
            all_reduce_mean(buf.data)
        else:
            torch.distributed.broadcast(buf.data, src=0)


def all_gather_rows(rows: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """Every rank's ``rows`` (``sizes[r]`` rows on rank ``r``, the same trailing shape), in rank order.

    The rows are padded to the largest size for one :func:`torch.distributed.all_gather`.
    """
    width = max(sizes)
    padded = rows.new_zeros((width, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    out = [torch.empty_like(padded) for _ in sizes]
    torch.distributed.all_gather(out, padded)
    return [t[:size] for t, size in zip(out, sizes, strict=True)]


def shared_seed() -> int:
    """A fresh random seed drawn on rank 0 and sent to every rank (what ``random_state=None`` means across ranks).

    Every rank must draw the same masks, batches and splits; seeds drawn independently would differ.
    """
    import secrets

    seed = [secrets.randbits(31)]
    torch.distributed.broadcast_object_list(seed, src=0)
    return int(seed[0])
