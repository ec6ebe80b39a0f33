"""Training configs: how to train (``TrainConfig``) and what to train (``ExperimentConfig``).

Both are immutable and validated on construction, so a bad value fails before any data is
loaded, with the field's path (``training.lr``) in a one-line :class:`UserError`. The YAML
schema of an experiment is ``{model: <ArchConfig>, training: <TrainConfig>}``; it is what
``mtlsearch export`` writes and ``mtlsearch train --config`` reads.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from mtlsearch._errors import UserError, as_float
from mtlsearch._yaml import dump_yaml, load_yaml, read_yaml_file
from mtlsearch.arch import ArchConfig, InputSpec, TaskSpec

#: The optimisers a config may name. A table, so adding one is one entry.
OPTIMIZERS: dict[str, str] = {"adam": "Adam", "adamw": "AdamW"}


def _fail(path: str, msg: str) -> None:
    raise UserError(f"{path}: {msg}")


def _as_int(value: Any, path: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        _fail(path, f"expected an integer, got {value!r}")
    if value < minimum:
        _fail(path, f"must be >= {minimum}, got {value}")
    return value


def _reject_unknown(data: Mapping[str, Any], cls: type, path: str) -> None:
    known = [f.name for f in fields(cls)]
    for key in data:
        if key not in known:
            _fail(f"{path}.{key}", f"unknown key; expected one of {known}")


def _expect_mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        _fail(path, f"expected a mapping, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class LossWeightingConfig:
    """How the per-task losses (or their gradients) combine into one update (see
    :mod:`mtlsearch.train._weighting` and :mod:`mtlsearch.train._gradient`).

    ``method``: a registered method (``fixed``, ``dynamic``, ``uncertainty``, ``dwa``,
    ``pcgrad``, ...; ``LOSS_WEIGHTINGS`` lists them). ``weights``/``gamma``: per-task values
    for the methods that read them (a task missing gets 1.0). ``options``: the method's own
    hyper-parameters (DWA's ``temperature``, CAGrad's ``c``, ...), written flat in YAML
    beside ``method``::

        loss_weighting: {method: dwa, temperature: 2.0}

    Each method declares the fields and options it reads (``accepts``, ``options``); naming
    one it ignores is an error (a silently ignored ``gamma`` is a wrong experiment). An
    option left out takes the method's default.
    """

    method: str = "fixed"
    weights: dict[str, float] = field(default_factory=dict)
    gamma: dict[str, float] = field(default_factory=dict)
    options: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        from mtlsearch.train._weighting import LOSS_WEIGHTINGS

        path = "training.loss_weighting"
        if self.method not in LOSS_WEIGHTINGS:
            _fail(
                f"{path}.method",
                f"unknown method {self.method!r}; expected one of {sorted(LOSS_WEIGHTINGS)}",
            )
        cls = LOSS_WEIGHTINGS[self.method]
        accepted = cls.accepts
        for name in ("weights", "gamma"):
            values = _expect_mapping(getattr(self, name), f"{path}.{name}")
            if values and name not in accepted:
                _fail(f"{path}.{name}", f"not used by method {self.method!r}")
            clean = {str(k): as_float(v, f"{path}.{name}.{k}") for k, v in values.items()}
            for k, v in clean.items():
                if name == "weights" and v < 0:
                    _fail(f"{path}.weights.{k}", f"must be >= 0, got {v}")
                if name == "gamma" and v <= 0:
                    _fail(f"{path}.gamma.{k}", f"must be > 0, got {v}")
            object.__setattr__(self, name, clean)
        given = _expect_mapping(self.options, f"{path}.options")
        options: dict[str, float] = {}
        for key, raw in given.items():
            spec = cls.options.get(str(key))
            if spec is None:
                known = sorted(cls.options)
                _fail(
                    f"{path}.{key}",
                    f"not an option of method {self.method!r}"
                    + (f"; its options are {known}" if known else " (it has none)"),
                )
            options[str(key)] = spec.check(raw, f"{path}.{key}")
        object.__setattr__(self, "options", options)
        cls.check_config(self)

    def option(self, name: str) -> Any:
        """The value of one of the method's options: the given one, else its default."""
        from mtlsearch.train._weighting import LOSS_WEIGHTINGS

        if name in self.options:
            return self.options[name]
        return LOSS_WEIGHTINGS[self.method].options[name].default

    def check_tasks(self, tasks: tuple[str, ...]) -> None:
        """Every task named in ``weights``/``gamma`` must be one of the model's."""
        for name in ("weights", "gamma"):
            for k in getattr(self, name):
                if k not in tasks:
                    _fail(
                        f"training.loss_weighting.{name}.{k}",
                        f"no such task; the tasks are {list(tasks)}",
                    )

    def for_tasks(self, tasks: tuple[str, ...]) -> LossWeightingConfig:
        """The same weighting restricted to a subset of the tasks (single-task baselines)."""
        return replace(
            self,
            weights={k: v for k, v in self.weights.items() if k in tasks},
            gamma={k: v for k, v in self.gamma.items() if k in tasks},
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method}
        if self.weights:
            out["weights"] = dict(self.weights)
        if self.gamma:
            out["gamma"] = dict(self.gamma)
        out.update(self.options)
        return out

    @classmethod
    def from_dict(cls, data: Any) -> LossWeightingConfig:
        path = "training.loss_weighting"
        if isinstance(data, str):  # shorthand: `loss_weighting: uncertainty`
            data = {"method": data}
        data = _expect_mapping(data, path)
        if "options" in data:
            _fail(f"{path}.options", "write a method's options beside 'method' (e.g. temperature: 2.0)")
        kwargs: dict[str, Any] = {}
        options: dict[str, Any] = {}
        for key, value in data.items():
            if value is None:  # `gamma:` left empty
                continue
            if key in ("method", "weights", "gamma"):
                kwargs[key] = value
            else:
                options[str(key)] = value
        return cls(**kwargs, options=options)


@dataclass(frozen=True)
class TrainConfig:
    """How to train one network.

    ``patience``: stop after that many epochs without a better ``monitor`` score; with or
    without it, the returned model has the weights of the best-scoring epoch (selection on
    the validation split). ``monitor``: ``"mean"`` (mean over tasks of the normalised primary
    metrics, see :func:`mtlsearch.train.normalised_score`) or a task name (that task's
    normalised primary metric). ``device``: ``auto`` (CUDA when present, else the CPU),
    ``cpu``, ``cuda``, ``cuda:N`` or ``mps``, checked for its form here and for presence when
    training starts (:mod:`mtlsearch.train._device`); ``None`` uses torch's default device
    (the CPU unless the caller changed it). ``precision``: ``fp32``, ``bf16`` or ``fp16``
    (mixed precision, :mod:`mtlsearch.train._precision`); fp16 refuses the loss weightings
    whose own backward its loss scaling would change.

    Class weights inside a task's per-sample loss (see :mod:`mtlsearch.train._tasks`):

    * ``pos_weight``: ``{binary task: p > 0}``, BCE-with-logits' ``pos_weight``: the
      positive term of the loss is multiplied by ``p`` (``p = n_neg / n_pos`` balances a
      rare positive class);
    * ``class_weights``: ``{multiclass task: [c_0, ..., c_{C-1}]}``, one weight >= 0 per
      class (not all 0), cross-entropy's ``weight``: a row of class ``j`` counts ``c_j``.

    Either way the task's loss stays divided by its number of rows (or total row weight,
    with a dataset ``weight`` column), not by the sum of class weights. A task left out
    weighs every class 1. Both are checked against the model's tasks (name, kind, number
    of classes) when an :class:`ExperimentConfig` is built.
    """

    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 1024
    epochs: int = 10
    patience: int | None = None
    monitor: str = "mean"
    loss_weighting: LossWeightingConfig = field(default_factory=LossWeightingConfig)
    seed: int = 0
    device: str | None = None
    precision: str = "fp32"
    pos_weight: dict[str, float] = field(default_factory=dict)
    class_weights: dict[str, tuple[float, ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        p = "training"
        if self.optimizer not in OPTIMIZERS:
            _fail(
                f"{p}.optimizer",
                f"unknown optimizer {self.optimizer!r}; expected one of {sorted(OPTIMIZERS)}",
            )
        lr = as_float(self.lr, f"{p}.lr")
        if lr <= 0:
            _fail(f"{p}.lr", f"must be > 0, got {lr}")
        wd = as_float(self.weight_decay, f"{p}.weight_decay")
        if wd < 0:
            _fail(f"{p}.weight_decay", f"must be >= 0, got {wd}")
        object.__setattr__(self, "lr", lr)
        object.__setattr__(self, "weight_decay", wd)
        _as_int(self.batch_size, f"{p}.batch_size", 1)
        _as_int(self.epochs, f"{p}.epochs", 1)
        if self.patience is not None:
            _as_int(self.patience, f"{p}.patience", 1)
        if not isinstance(self.monitor, str) or not self.monitor:
            _fail(f"{p}.monitor", f"expected 'mean' or a task name, got {self.monitor!r}")
        _as_int(self.seed, f"{p}.seed", 0)
        if not isinstance(self.loss_weighting, LossWeightingConfig):
            _fail(f"{p}.loss_weighting", "expected a LossWeightingConfig")
        from mtlsearch.train._device import check_device_text
        from mtlsearch.train._precision import PRECISIONS, check_precision_text

        if self.device is not None:
            object.__setattr__(self, "device", check_device_text(self.device, f"{p}.device"))
        object.__setattr__(self, "precision", check_precision_text(self.precision, f"{p}.precision"))
        PRECISIONS[self.precision].check_method(self.loss_weighting.method, f"{p}.precision")
        pos: dict[str, float] = {}
        for task, raw in _expect_mapping(self.pos_weight, f"{p}.pos_weight").items():
            value = as_float(raw, f"{p}.pos_weight.{task}")
            if value <= 0:
                _fail(f"{p}.pos_weight.{task}", f"must be > 0, got {value}")
            pos[str(task)] = value
        object.__setattr__(self, "pos_weight", pos)
        classes: dict[str, tuple[float, ...]] = {}
        for task, raw in _expect_mapping(self.class_weights, f"{p}.class_weights").items():
            where = f"{p}.class_weights.{task}"
            if isinstance(raw, str | bytes) or not isinstance(raw, list | tuple):
                _fail(where, f"expected a list of one weight per class, got {raw!r}")
            values = tuple(as_float(v, f"{where}[{j}]") for j, v in enumerate(raw))
            for j, v in enumerate(values):
                if v < 0:
                    _fail(f"{where}[{j}]", f"must be >= 0, got {v}")
            if len(values) < 2:
                _fail(where, f"expected one weight per class (at least 2), got {len(values)}")
            if not any(values):
                _fail(where, "all weights are 0; at least one class must count")
            classes[str(task)] = values
        object.__setattr__(self, "class_weights", classes)

    def check_tasks(self, tasks: tuple[str, ...] | tuple[TaskSpec, ...]) -> None:
        """Fields that name tasks must name the model's tasks. Given task specs
        (not just names), ``pos_weight`` / ``class_weights`` are also checked against each
        task's kind and number of classes."""
        specs = {t.name: t for t in tasks if isinstance(t, TaskSpec)}
        names = tuple(t.name if isinstance(t, TaskSpec) else t for t in tasks)
        if self.monitor != "mean" and self.monitor not in names:
            _fail(
                "training.monitor",
                f"unknown task {self.monitor!r}; expected 'mean' or one of {list(names)}",
            )
        self.loss_weighting.check_tasks(names)
        from mtlsearch.train._tasks import TASK_KINDS

        for name in ("pos_weight", "class_weights"):
            kinds = [k for k, v in TASK_KINDS.items() if v.weight_field == name]
            for task, value in getattr(self, name).items():
                where = f"training.{name}.{task}"
                if task not in names:
                    _fail(where, f"no such task; the tasks are {list(names)}")
                spec = specs.get(task)
                if spec is None:
                    continue
                if spec.kind not in kinds:
                    _fail(where, f"only for {' / '.join(kinds)} tasks; task {task!r} is {spec.kind}")
                if isinstance(value, tuple) and spec.n_classes is not None and len(value) != spec.n_classes:
                    _fail(
                        where,
                        f"expected one weight per class ({spec.n_classes}), got {len(value)}",
                    )

    def for_tasks(self, tasks: tuple[str, ...]) -> TrainConfig:
        """The same config with the per-task class weights restricted to ``tasks`` (the
        single-task baselines keep their task's entry)."""
        return replace(
            self,
            pos_weight={k: v for k, v in self.pos_weight.items() if k in tasks},
            class_weights={k: v for k, v in self.class_weights.items() if k in tasks},
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data for YAML; the class weights only when some are set (a config without
        them reads as before)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "loss_weighting":
                value = value.to_dict()
            elif f.name == "pos_weight":
                if not value:
                    continue
                value = dict(value)
            elif f.name == "class_weights":
                if not value:
                    continue
                value = {k: list(v) for k, v in value.items()}
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Any) -> TrainConfig:
        """Build from plain data; unknown keys are errors naming ``training.<key>``."""
        data = _expect_mapping(data if data is not None else {}, "training")
        _reject_unknown(data, cls, "training")
        kwargs = dict(data)
        if "loss_weighting" in kwargs:
            kwargs["loss_weighting"] = LossWeightingConfig.from_dict(kwargs["loss_weighting"])
        for key in ("pos_weight", "class_weights"):
            if key in kwargs and kwargs[key] is None:  # `pos_weight:` left empty
                del kwargs[key]
        return cls(**kwargs)


@dataclass(frozen=True)
class ExperimentConfig:
    """What to train and how: an architecture plus its training config."""

    model: ArchConfig
    training: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.training.check_tasks(self.model.tasks)  # names, kinds and classes
        from mtlsearch.train._weighting import LOSS_WEIGHTINGS

        LOSS_WEIGHTINGS[self.training.loss_weighting.method].check_model(self.model)

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model.to_dict(), "training": self.training.to_dict()}

    @classmethod
    def from_dict(
        cls,
        data: Any,
        *,
        inputs: InputSpec | None = None,
        tasks: tuple[TaskSpec, ...] | None = None,
    ) -> ExperimentConfig:
        """Build from plain data (as read from YAML).

        ``inputs``/``tasks`` fill ``model.inputs``/``model.tasks`` when the file leaves them
        out, so one hand-written architecture file (levels and towers only) trains on any
        dataset; the CLI passes the dataset's. Values in the file always win (an ``inputs``
        section holding only ``embed_init_std`` and/or ``task_embedding_dim`` keeps the
        dataset's features).
        """
        data = _expect_mapping(data, "experiment")
        for key in data:
            if key not in ("model", "training"):
                _fail(key, "unknown top-level key; expected 'model' and 'training'")
        if "model" not in data:
            _fail("model", "missing section (the architecture)")
        model_raw = dict(_expect_mapping(data["model"], "model"))
        given = model_raw.get("inputs")
        if inputs is not None and (
            given is None
            or (isinstance(given, dict) and given.keys() <= {"embed_init_std", "task_embedding_dim"})
        ):
            # no features in the file: the dataset's, keeping an embed_init_std (or STEM's
            # task_embedding_dim) the file sets
            model_raw["inputs"] = {**_plain(inputs), **(given or {})}
        if "tasks" not in model_raw and tasks is not None:
            model_raw["tasks"] = [_plain(t) for t in tasks]
        try:
            model = ArchConfig.from_dict(model_raw)
        except UserError as exc:
            msg = str(exc)
            raise UserError(msg if msg.startswith("model") else f"model.{msg}") from None
        return cls(model=model, training=TrainConfig.from_dict(data.get("training")))

    def to_yaml(self) -> str:
        """The YAML of :meth:`to_dict`, leaving out an unset ``training.device`` (the device
        belongs to the machine that trains: a written config trains anywhere); reads back equal."""
        data = self.to_dict()
        if data["training"].get("device", "") is None:
            del data["training"]["device"]
        return dump_yaml(data)

    @classmethod
    def from_yaml(cls, text: str, source: str = "<experiment>", **fill: Any) -> ExperimentConfig:
        """Parse with the tool's YAML rules (:mod:`mtlsearch._yaml`): a YAML error names
        ``source``; a field error starts with the field's path (``training.lr``)."""
        return cls.from_dict(load_yaml(text, source, what="experiment config"), **fill)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_yaml())

    @classmethod
    def load(cls, path: str | Path, **fill: Any) -> ExperimentConfig:
        """Read a YAML file; any error names the file."""
        path = Path(path)
        if not path.is_file():
            raise UserError(f"{path}: no such file")
        _, data = read_yaml_file(path, "experiment config")
        try:
            return cls.from_dict(data, **fill)
        except UserError as exc:
            raise UserError(f"{path}: {exc}") from None


def _plain(obj: Any) -> Any:
    if hasattr(obj, "__dataclass_fields__"):
        return {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
    if isinstance(obj, tuple | list):
        return [_plain(v) for v in obj]
    return obj
