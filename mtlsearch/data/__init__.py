"""Data layer: dataset specs, fitted preprocessing, in-memory tensors, built-in datasets."""

from mtlsearch.data._synthetic import make_synthetic, synthetic_arrays
from mtlsearch.data._tensors import MTLDataset, TensorSplit

__all__ = ["MTLDataset", "TensorSplit", "make_synthetic", "synthetic_arrays"]
