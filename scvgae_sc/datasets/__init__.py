"""Datasets: offline real data, the seed paper's csv format, and a count simulator."""

from ._csv import read_labeled_csv
from ._pbmc68k import pbmc68k
from ._simulate import simulate

__all__ = ["pbmc68k", "read_labeled_csv", "simulate"]
