"""Architecture layer: the immutable config, the pure builder and the named presets.

Knows nothing of data files, training, Optuna or MLflow.
"""

from mtlsearch.arch._config import (
    ACTIVATIONS,
    ArchConfig,
    CategoricalFeature,
    ConfigError,
    InputSpec,
    LevelConfig,
    TaskSpec,
    TowerConfig,
)
from mtlsearch.arch._layers import GATES, BatchedMLP
from mtlsearch.arch._model import MTLNetwork, build_model, count_parameters
from mtlsearch.arch._presets import PRESETS, preset

__all__ = [
    "ACTIVATIONS",
    "GATES",
    "PRESETS",
    "ArchConfig",
    "BatchedMLP",
    "CategoricalFeature",
    "ConfigError",
    "InputSpec",
    "LevelConfig",
    "MTLNetwork",
    "TaskSpec",
    "TowerConfig",
    "build_model",
    "count_parameters",
    "preset",
]
