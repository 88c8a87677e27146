"""Sparse CSR tensors without PyTorch's one-time "beta" warnings reaching the user."""

from __future__ import annotations

import warnings

import torch

_BETA = "Sparse CSR tensor support is in beta state"


def sparse_mm_supported(device: torch.device | str) -> bool:
    """Whether the models' sparse products run on ``device`` (CPU and CUDA); elsewhere they use PyG's edge path."""
    return torch.device(device).type in ("cpu", "cuda")


def csr_tensor(ptr: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """``torch.sparse_csr_tensor`` without invariant checks (callers build valid structures) or beta warning."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BETA, category=UserWarning)
        return torch.sparse_csr_tensor(ptr, cols, values, shape, check_invariants=False)


def coo_to_csr(indices: torch.Tensor, values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A CSR matrix from COO ``indices`` (``(2, nnz)``: rows, columns) and ``values``; duplicates are summed."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_BETA, category=UserWarning)
        coo = torch.sparse_coo_tensor(indices, values, shape, check_invariants=False)
        return coo.coalesce().to_sparse_csr()
