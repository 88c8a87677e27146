"""The device a user's ``device`` argument names (shared by the trainer and the process-group helpers)."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a user's ``device`` argument into a :class:`torch.device`, refusing what is not there.

    Parameters
    ----------
    device
        ``"auto"`` (CUDA if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``, ``"mps"`` or a
        :class:`torch.device`.

    Returns
    -------
    The device.

    Raises
    ------
    ValueError
        For an unknown name, or a CUDA / MPS device this machine does not have.
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    if not isinstance(device, str | torch.device):
        raise TypeError(f"device must be a string or torch.device, got {type(device).__name__}.")
    try:
        dev = torch.device(device)
    except RuntimeError as err:
        raise ValueError(f"Unknown device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or a torch.device.") from err
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} was requested but CUDA is not available (torch {torch.__version__}, "
                "CUDA build: {}). Use device='cpu' or 'auto', or install a CUDA build of torch.".format(
                    torch.version.cuda or "no"
                )
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} was requested but only {torch.cuda.device_count()} CUDA device(s) exist."
            )
    elif dev.type == "mps":
        if not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise ValueError(f"device={device!r} was requested but MPS is not available. Use device='cpu'.")
    elif dev.type != "cpu":
        raise ValueError(f"Unsupported device {device!r}; use 'auto', 'cpu', 'cuda', 'cuda:N' or 'mps'.")
    return dev
