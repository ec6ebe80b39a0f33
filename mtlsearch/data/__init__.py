"""Data layer: dataset specs, fitted preprocessing, in-memory tensors, built-in datasets.

Layers above read data only through :func:`load_dataset` (a built-in name or a spec file)
and the :class:`MTLDataset` it returns; a trained model keeps ``dataset.preprocessor``
(``Preprocessor.to_dict()``, JSON) so that it can score raw rows later.
"""

from mtlsearch.data._builtin import (
    BUILTIN_DATASETS,
    BuiltinDataset,
    census_files,
    census_spec,
    load_ali_ccp,
    load_aliexpress,
    load_builtin,
    load_census_income,
    load_dataset,
    load_synthetic,
)
from mtlsearch.data._describe import DatasetDescription, describe
from mtlsearch.data._download import cache_dir, fetch_verified
from mtlsearch.data._io import read_table
from mtlsearch.data._preprocess import Preprocessor
from mtlsearch.data._sample import MAX_ROWS, check_max_rows, hashed_indices, sample_train
from mtlsearch.data._spec import (
    DatasetSpec,
    FeatureSpec,
    FileSpec,
    MaskSpec,
    SpecError,
    SplitSpec,
    TaskDef,
)
from mtlsearch.data._streamsplit import StreamSplit, is_streamed
from mtlsearch.data._synthetic import make_synthetic, synthetic_arrays
from mtlsearch.data._tables import load_from_spec
from mtlsearch.data._tensors import MTLDataset, TensorSplit

__all__ = [
    "BUILTIN_DATASETS",
    "MAX_ROWS",
    "BuiltinDataset",
    "DatasetDescription",
    "DatasetSpec",
    "FeatureSpec",
    "FileSpec",
    "MTLDataset",
    "MaskSpec",
    "Preprocessor",
    "SpecError",
    "SplitSpec",
    "StreamSplit",
    "TaskDef",
    "TensorSplit",
    "cache_dir",
    "census_files",
    "census_spec",
    "check_max_rows",
    "describe",
    "fetch_verified",
    "hashed_indices",
    "is_streamed",
    "load_ali_ccp",
    "load_aliexpress",
    "load_builtin",
    "load_census_income",
    "load_dataset",
    "load_from_spec",
    "load_synthetic",
    "make_synthetic",
    "read_table",
    "sample_train",
    "synthetic_arrays",
]
