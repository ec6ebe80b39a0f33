"""Single-task references, the named MTL presets under the same budget, and the seesaw report.

The single-task reference is one network per task (``preset("single_task")`` on that task
alone), each selected on its own validation metric, trained with the same optimiser, batch
size, epochs and seed as the multi-task models, and with the plain (fixed, weight 1) loss
since weighting between tasks means nothing for one task; each keeps its own task's class
weights (``pos_weight`` / ``class_weights``) and the data's row weights, so it learns the
same per-task objective as the multi-task models. Every other model gets the training
config as given.

Gains follow the PLE paper: ``M_mtl - M_single`` on the task's primary metric when higher is
better, ``M_single - M_mtl`` otherwise, on the mean over seeds. The verdict (better on all
tasks, seesaw, ...) is the one rule of :mod:`mtlsearch.train._verdict`, shared with the
search's front and the report: a gain counts only beyond two standard errors over seeds.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from mtlsearch._errors import UserError
from mtlsearch.arch import PRESETS, TaskSpec, preset
from mtlsearch.data import MTLDataset
from mtlsearch.train._config import ExperimentConfig, LossWeightingConfig, TrainConfig
from mtlsearch.train._fit import TrainResult, fit
from mtlsearch.train._tasks import PRIMARY_METRICS, mtl_gain
from mtlsearch.train._verdict import BEATS as BEATS  # re-exported: the verdict codes
from mtlsearch.train._verdict import NO_GAIN as NO_GAIN
from mtlsearch.train._verdict import NOISE, RULE, counted_gain, judge, label, standard_error
from mtlsearch.train._verdict import PARTIAL as PARTIAL
from mtlsearch.train._verdict import SEESAW as SEESAW
from mtlsearch.train._verdict import classify_gains as classify_gains

SINGLE_TASK = "single_task"
DEFAULT_PRESETS: tuple[str, ...] = ("shared_bottom", "mmoe", "cgc", "ple")


@dataclass(frozen=True)
class BaselineRun:
    """One model trained with one seed. For the single-task reference the numbers combine
    the per-task networks: parameters, seconds and seconds per epoch are sums."""

    model: str
    seed: int
    valid: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    best_epoch: dict[str, int]
    n_params: int
    seconds: float
    epoch_seconds: float  # mean wall time of one epoch

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "seed": self.seed,
            "valid": self.valid,
            "test": self.test,
            "best_epoch": self.best_epoch,
            "n_params": self.n_params,
            "seconds": self.seconds,
            "epoch_seconds": self.epoch_seconds,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineRun:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    return mean, statistics.stdev(values) if len(values) > 1 else 0.0


@dataclass
class BaselineReport:
    """All runs of a baseline comparison, with the single-task references they are judged by."""

    dataset: str
    tasks: tuple[TaskSpec, ...]
    training: TrainConfig
    sizes: dict[str, Any]
    runs: list[BaselineRun] = field(default_factory=list)

    @property
    def models(self) -> list[str]:
        return list(dict.fromkeys(r.model for r in self.runs))

    @property
    def seeds(self) -> list[int]:
        return sorted({r.seed for r in self.runs})

    def runs_of(self, model: str) -> list[BaselineRun]:
        runs = [r for r in self.runs if r.model == model]
        if not runs:
            raise KeyError(f"no runs of {model!r}; the models are {self.models}")
        return runs

    def metric(
        self, model: str, task: str, metric: str | None = None, split: str = "test"
    ) -> tuple[float, float]:
        """Mean and sample standard deviation over seeds (primary metric by default)."""
        metric = metric or PRIMARY_METRICS[self._kind(task)][0]
        return _mean_std([getattr(r, split)[task][metric] for r in self.runs_of(model)])

    def single_task_reference(self, split: str = "valid") -> dict[str, dict[str, float]]:
        """The single-task models' metrics (mean over seeds): what a trial is compared with."""
        runs = self.runs_of(SINGLE_TASK)
        return {
            t.name: {
                m: statistics.fmean(getattr(r, split)[t.name][m] for r in runs)
                for m in getattr(runs[0], split)[t.name]
            }
            for t in self.tasks
        }

    def gain(self, model: str, task: str, split: str = "test") -> float:
        """MTL gain of ``model`` over single-task on ``task``'s primary metric (> 0: better)."""
        kind = self._kind(task)
        return mtl_gain(
            kind,
            self.metric(model, task, split=split)[0],
            self.metric(SINGLE_TASK, task, split=split)[0],
        )

    def gains(self, model: str, split: str = "test") -> dict[str, float]:
        return {t.name: self.gain(model, t.name, split) for t in self.tasks}

    def verdict(self, model: str, split: str = "test", noise: float = NOISE) -> str:
        """The verdict code of ``model`` (:func:`mtlsearch.train._verdict.judge`): a task's
        gain counts only beyond ``noise`` standard errors of the difference of the two means
        over seeds; with one seed of either model the verdict is ``one_seed`` (no verdict)."""
        return judge(self.gains(model, split), self.standard_errors(model, split), noise)

    def standard_errors(self, model: str, split: str = "test") -> dict[str, float | None]:
        """Per task: standard error of the gain's difference of means (``None``: one seed)."""
        n_model, n_single = len(self.runs_of(model)), len(self.runs_of(SINGLE_TASK))
        return {
            t.name: standard_error(
                self.metric(model, t.name, split=split)[1],
                n_model,
                self.metric(SINGLE_TASK, t.name, split=split)[1],
                n_single,
            )
            for t in self.tasks
        }

    def clear_gains(self, model: str, split: str = "test", noise: float = NOISE) -> dict[str, float]:
        """Each task's gain, or 0.0 where it is within ``noise`` standard errors (see verdict);
        with one seed every gain is kept as it is (there is no noise estimate)."""
        errors = self.standard_errors(model, split)
        return {
            task: gain if errors[task] is None else counted_gain(gain, errors[task], noise)
            for task, gain in self.gains(model, split).items()
        }

    def _kind(self, task: str) -> str:
        for t in self.tasks:
            if t.name == task:
                return t.kind
        raise KeyError(f"no task {task!r}; the tasks are {[t.name for t in self.tasks]}")

    # ---- reporting and persistence ------------------------------------------------------
    def to_markdown(self, split: str = "test") -> str:
        """A table: each task's primary metric (mean ± std over seeds) and gain, per model."""
        head = ["model"]
        for t in self.tasks:
            m = PRIMARY_METRICS[t.kind][0]
            head += [f"{t.name} {m}", f"{t.name} gain"]
        head += ["verdict", "params", "s/epoch"]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for model in self.models:
            row = [model]
            for t in self.tasks:
                mean, std = self.metric(model, t.name, split=split)
                row.append(f"{mean:.4f} ± {std:.4f}" if len(self.seeds) > 1 else f"{mean:.4f}")
                row.append("" if model == SINGLE_TASK else f"{self.gain(model, t.name, split):+.4f}")
            runs = self.runs_of(model)
            row.append("reference" if model == SINGLE_TASK else label(self.verdict(model, split)))
            row.append(f"{runs[0].n_params:,}")
            row.append(f"{statistics.fmean(r.epoch_seconds for r in runs):.2f}")
            lines.append("| " + " | ".join(row) + " |")
        lines += ["", RULE + "."]
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "tasks": [{"name": t.name, "kind": t.kind, "n_classes": t.n_classes} for t in self.tasks],
            "training": self.training.to_dict(),
            "sizes": dict(self.sizes),
            "runs": [r.to_dict() for r in self.runs],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BaselineReport:
        return cls(
            dataset=data["dataset"],
            tasks=tuple(TaskSpec(**t) for t in data["tasks"]),
            training=TrainConfig.from_dict(data["training"]),
            sizes=dict(data.get("sizes", {})),
            runs=[BaselineRun.from_dict(r) for r in data["runs"]],
        )

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2))

    @classmethod
    def load(cls, path: str | Path) -> BaselineReport:
        path = Path(path)
        try:
            return cls.from_dict(json.loads(path.read_text()))
        except FileNotFoundError:
            raise UserError(f"{path}: no such file") from None
        except (ValueError, KeyError, TypeError) as exc:
            raise UserError(f"{path}: not a baseline report ({exc})") from None


def _run(model: str, seed: int, results: Sequence[TrainResult]) -> BaselineRun:
    """Fold one or more fits (one per task for single-task) into one run."""
    valid: dict[str, dict[str, float]] = {}
    test: dict[str, dict[str, float]] = {}
    best: dict[str, int] = {}
    for r in results:
        valid.update(r.valid)
        test.update(r.test)
        best.update({t: r.best_epoch for t in r.config.model.task_names})
    return BaselineRun(
        model=model,
        seed=seed,
        valid=valid,
        test=test,
        best_epoch=best,
        n_params=sum(r.n_params for r in results),
        seconds=sum(r.seconds for r in results),
        epoch_seconds=sum(statistics.fmean(r.epoch_seconds) for r in results),
    )


def run_baselines(
    data: MTLDataset,
    training: TrainConfig,
    presets: Sequence[str] = DEFAULT_PRESETS,
    sizes: Mapping[str, Any] | None = None,
    *,
    seeds: Sequence[int] | None = None,
    progress: bool = False,
    on_run: Callable[[BaselineRun], None] | None = None,
) -> BaselineReport:
    """Train the single-task references and each preset on ``data`` with the same budget.

    ``sizes`` go to every preset (``expert_hidden``, ``tower``, ``n_experts``, ...; each preset
    takes what it uses). ``seeds`` default to ``(training.seed,)``; metrics are averaged over
    them. ``on_run`` is called after each (model, seed) run, e.g. to log progress.
    """
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        raise UserError(f"presets: unknown preset {unknown[0]!r}; expected some of {sorted(PRESETS)}")
    sizes = dict(sizes or {})
    seeds = tuple(seeds) if seeds is not None else (training.seed,)
    inputs = data.input_spec()
    report = BaselineReport(dataset=data.name, tasks=data.tasks, training=training, sizes=sizes)
    models = [SINGLE_TASK, *(p for p in presets if p != SINGLE_TASK)]
    for seed in seeds:
        for name in models:
            if name == SINGLE_TASK:
                results = [
                    fit(
                        ExperimentConfig(
                            model=preset(SINGLE_TASK, inputs, (t,), **sizes),
                            training=replace(
                                training.for_tasks((t.name,)),
                                seed=seed,
                                monitor=t.name,
                                loss_weighting=LossWeightingConfig(),
                            ),
                        ),
                        data,
                        progress=progress,
                    )
                    for t in data.tasks
                ]
            else:
                config = ExperimentConfig(
                    model=preset(name, inputs, data.tasks, **sizes),
                    training=replace(training, seed=seed),
                )
                results = [fit(config, data, progress=progress)]
            run = _run(name, seed, results)
            report.runs.append(run)
            if on_run is not None:
                on_run(run)
    return report
