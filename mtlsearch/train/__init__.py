"""Training layer: the trainer, per-task metrics, loss weighting, checkpoints, baselines.

Reads data only through :mod:`mtlsearch.data` and architectures through
:mod:`mtlsearch.arch`; knows nothing of Optuna or MLflow (the search stops a trial by
raising from an epoch callback).
"""

from mtlsearch.train import _gradient  # noqa: F401  (registers methods)
from mtlsearch.train._baselines import (
    DEFAULT_PRESETS,
    SINGLE_TASK,
    BaselineReport,
    BaselineRun,
    classify_gains,
    run_baselines,
)
from mtlsearch.train._checkpoint import (
    Checkpoint,
    ColumnSelector,
    load_checkpoint,
    predict,
    save_checkpoint,
)
from mtlsearch.train._config import (
    OPTIMIZERS,
    ExperimentConfig,
    LossWeightingConfig,
    TrainConfig,
)
from mtlsearch.train._device import DEVICE_CHOICES, check_device_text, resolve_device
from mtlsearch.train._errors import TrainingDiverged
from mtlsearch.train._fit import EpochReport, TrainResult, check_compatible, fit
from mtlsearch.train._latency import measure_latency
from mtlsearch.train._memory import (
    MAX_MEMORY_ENV,
    MemoryEstimate,
    MemoryLimitExceeded,
    available_memory,
    check_memory,
    estimate_memory,
    memory_limit,
)
from mtlsearch.train._precision import PRECISIONS, Precision, check_precision_text, make_precision
from mtlsearch.train._tasks import PRIMARY_METRICS, TASK_KINDS, compute_metrics, mtl_gain
from mtlsearch.train._weighting import (
    LOSS_WEIGHTINGS,
    DynamicWeighting,
    FixedWeighting,
    LossWeighting,
    UncertaintyWeighting,
    make_loss_weighting,
    register_loss_weighting,
)

__all__ = [
    "DEFAULT_PRESETS",
    "DEVICE_CHOICES",
    "LOSS_WEIGHTINGS",
    "MAX_MEMORY_ENV",
    "OPTIMIZERS",
    "PRECISIONS",
    "PRIMARY_METRICS",
    "SINGLE_TASK",
    "TASK_KINDS",
    "BaselineReport",
    "BaselineRun",
    "Checkpoint",
    "ColumnSelector",
    "DynamicWeighting",
    "EpochReport",
    "ExperimentConfig",
    "FixedWeighting",
    "LossWeighting",
    "LossWeightingConfig",
    "MemoryEstimate",
    "MemoryLimitExceeded",
    "Precision",
    "TrainConfig",
    "TrainResult",
    "TrainingDiverged",
    "UncertaintyWeighting",
    "available_memory",
    "check_compatible",
    "check_device_text",
    "check_memory",
    "check_precision_text",
    "classify_gains",
    "compute_metrics",
    "estimate_memory",
    "fit",
    "load_checkpoint",
    "make_loss_weighting",
    "make_precision",
    "measure_latency",
    "memory_limit",
    "mtl_gain",
    "predict",
    "register_loss_weighting",
    "resolve_device",
    "run_baselines",
    "save_checkpoint",
]
