"""Tracking layer: MLflow logging of searches, HTML reports, export of a picked model.

Reads studies through :mod:`mtlsearch.search` and models through :mod:`mtlsearch.train`;
nothing below it imports this package. MLflow is imported lazily (it takes seconds).
"""

from mtlsearch.tracking._export import ExportResult, export_pick, train_command
from mtlsearch.tracking._mlflow import (
    PARENT_ATTR,
    TAG_FRONT,
    TAG_RANK,
    TAG_TRIAL,
    URI_ATTR,
    MlflowObserver,
    default_tracking_uri,
)
from mtlsearch.tracking._report import Importances, param_importances, render_report, write_report
from mtlsearch.tracking._serving import (
    ServingModel,
    ServingSchema,
    save_serving,
    serving_input,
    serving_schema,
)
from mtlsearch.tracking._summary import RUN_ID_ATTR, front_records, hypervolume_history, trial_points

__all__ = [
    "PARENT_ATTR",
    "RUN_ID_ATTR",
    "TAG_FRONT",
    "TAG_RANK",
    "TAG_TRIAL",
    "URI_ATTR",
    "ExportResult",
    "Importances",
    "MlflowObserver",
    "ServingModel",
    "ServingSchema",
    "default_tracking_uri",
    "export_pick",
    "front_records",
    "hypervolume_history",
    "param_importances",
    "render_report",
    "save_serving",
    "serving_input",
    "serving_schema",
    "train_command",
    "trial_points",
    "write_report",
]
