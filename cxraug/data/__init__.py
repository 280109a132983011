"""Prepared datasets: the manifest and image cache that training and evaluation read."""

from cxraug.data.prepared import PreparedDataset

__all__ = ["PreparedDataset"]
