"""mtlsearch: search the design space of multi-task networks (PLE and its family).

Layers, lowest first: ``arch`` (config + builder), ``data`` (specs, tensors, fitted
preprocessing), ``train`` (trainer, metrics, checkpoints), ``search`` (Optuna studies),
``tracking`` (MLflow observers), ``cli``. A lower layer never imports a higher one.
"""

__version__ = "0.1.0"
