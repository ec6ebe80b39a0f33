"""``mtlsearch report``: one self-contained HTML file about a study.

Everything comes from the study storage (trial user attributes hold the metrics, configs
and expert utilisation), so a report needs neither MLflow nor the data. Images are inline
(base64 PNG, inline SVG): the file can be mailed or attached to a ticket as it is.
"""

from __future__ import annotations

import base64
import html
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

import mtlsearch
from mtlsearch._errors import UserError
from mtlsearch.search import (
    CONFIG_ATTR,
    Objective,
    describe_config,
    front_table,
    objectives_of,
    settings_of,
)
from mtlsearch.tracking import _figures
from mtlsearch.tracking._summary import (
    PRUNED_REASON_ATTR,
    UTILISATION_ATTR,
    epoch_paths,
    hypervolume_history,
    param_name,
    pruning_text,
    rung_counts,
    rung_epochs,
    rung_text,
    stop_decision,
    trial_points,
)
from mtlsearch.train._verdict import BEATS, SEESAW, WORSE
from mtlsearch.train._verdict import RULE as VERDICT_RULE
from mtlsearch.train._verdict import label as verdict_label

#: Importances whose raw sum is below this carry no signal (PED-ANOVA returns zeros when no
#: parameter separates the good trials from the rest; normalising those gives equal bars).
_NO_SIGNAL = 1e-12


@dataclass
class Importances:
    """Parameter importances per target (``all objectives`` and each objective), normalised
    to sum to 1, under the parameters' config names (:func:`param_name`); ``no_signal``: the
    targets whose importances were all zero (nothing to normalise), and what could not be
    computed, with the reason."""

    values: dict[str, dict[str, float]] = field(default_factory=dict)
    method: str = ""
    notes: list[str] = field(default_factory=list)
    no_signal: list[str] = field(default_factory=list)

    def add(self, target: str, raw: dict[str, float]) -> None:
        """Record ``raw`` (unnormalised) importances of ``target``."""
        total = sum(raw.values())
        if not raw or not total > _NO_SIGNAL:
            self.no_signal.append(target)
            return
        self.values[target] = {param_name(k): v / total for k, v in raw.items()}


def param_importances(study: optuna.Study, objectives: Sequence[Objective]) -> Importances:
    """Optuna's importances: PED-ANOVA (Optuna 5's default, which handles several
    objectives jointly and conditional parameters) for all objectives and for each one;
    fANOVA per objective where PED-ANOVA fails. The named reference trials carry no sampled
    parameters and do not count."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    out = Importances(method="PED-ANOVA")
    searched = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.params]
    if len(searched) < 3:
        out.notes.append(f"needs at least 3 completed searched trials, the study has {len(searched)}")
        return out
    if len(searched) < 20:
        out.notes.append(f"only {len(searched)} searched trials: importances are rough below about 20")
    targets: list[tuple[str, Any]] = [("all objectives", None)]
    targets += [(o.name, (lambda t, i=i: t.values[i])) for i, o in enumerate(objectives)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name, target in targets:
            try:
                out.add(name, dict(get_param_importances(study, target=target, normalize=False)))
                continue
            except Exception as exc:
                first = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if target is None:
                out.notes.append(f"{name}: PED-ANOVA failed ({first})")
                continue
            try:
                evaluator = FanovaImportanceEvaluator(seed=0)
                raw = get_param_importances(study, evaluator=evaluator, target=target, normalize=False)
                out.add(name, dict(raw))
                out.notes.append(f"{name}: PED-ANOVA failed ({first}); fANOVA used instead")
            except Exception as exc2:
                out.notes.append(f"{name}: no importances ({type(exc2).__name__}: {exc2})")
    return out


# ---- HTML -------------------------------------------------------------------------------------
_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1200px;
color:#222;padding:0 1em}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:1.8em;border-bottom:1px solid #ddd;padding-bottom:.2em}
table{border-collapse:collapse;font-size:.9em;margin:.5em 0}
th,td{border:1px solid #ddd;padding:.3em .6em;text-align:right}th{background:#f3f4f6}
td.l,th.l{text-align:left}.pos{color:#1a7f37}.neg{color:#cf222e}.muted{color:#777}
.tag{display:inline-block;padding:0 .4em;border-radius:3px;font-size:.85em}
.seesaw{background:#fff4ce}.beats{background:#dafbe1}.worse{background:#ffebe9}
img{max-width:100%}.grid{display:flex;flex-wrap:wrap;gap:1em}.grid figure{margin:0}
figcaption{font-size:.85em;color:#555}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v: Any, digits: int = 5) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.{digits}g}"
    return html.escape(str(v))


def _gain_cell(g: float | None) -> str:
    if g is None:
        return '<td class="muted">–</td>'
    cls = "pos" if g > 0 else "neg" if g < 0 else ""
    return f'<td class="{cls}">{g:+.4f}</td>'


_VERDICT_CLASS = {BEATS: "beats", SEESAW: "seesaw", WORSE: "worse"}


def _front_html(study: optuna.Study, objectives: Sequence[Objective]) -> str:
    rows = front_table(study, objectives)
    if not rows:
        return "<p>No completed trial yet.</p>"
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    task_objs = [o for o in objectives if not o.is_cost]
    size_column = not any(o.name == "params" for o in objectives)  # else the same number twice
    head = ['<th>trial</th><th class="l">model</th>']
    head += [
        f"<th>{html.escape(o.name)}<br><span class=muted>{o.direction[:3]}</span></th>" for o in objectives
    ]
    head += [f"<th>gain {html.escape(o.name)}</th>" for o in task_objs]
    head += ["<th>params</th>"] * size_column + ['<th class="l">vs single-task</th>']
    head += ['<th class="l">architecture</th>']
    body = []
    for r in rows:
        t = by_number[r.trial]
        cls = _VERDICT_CLASS.get(r.verdict, "")
        verdict = f'<span class="tag {cls}">{html.escape(verdict_label(r.verdict))}</span>'
        cells = [f"<td>{r.trial}</td>", f'<td class="l">{html.escape(r.name)}</td>']
        cells += [f"<td>{_fmt(r.values[o.name])}</td>" for o in objectives]
        cells += [_gain_cell(r.gains.get(o.name)) for o in task_objs]
        cells += [f"<td>{_fmt(t.user_attrs.get('n_params'))}</td>"] * size_column
        cells.append(f'<td class="l">{verdict}</td>')
        cells.append(f'<td class="l">{html.escape(describe_config(t.user_attrs.get(CONFIG_ATTR)))}</td>')
        body.append(f"<tr>{''.join(cells)}</tr>")
    note = (
        "<p class=muted>Gain: the PLE paper's MTL gain of each task over the single-task "
        f"reference trial (positive = better). {html.escape(VERDICT_RULE[0].upper() + VERDICT_RULE[1:])}."
        "</p>"
    )
    if not any(t.user_attrs.get("preset") == "single_task" for t in by_number.values()):
        note = "<p class=muted>No single-task reference trial in this study: gains are unknown.</p>"
    return f"<table><tr>{''.join(head)}</tr>{''.join(body)}</table>{note}"


def _importance_html(imp: Importances) -> str:
    parts = []
    if imp.values:
        parts.append(_img(_figures.importance_png(imp.values), "parameter importances"))
        params = sorted({p for v in imp.values.values() for p in v})
        head = '<th class="l">parameter</th>' + "".join(f"<th>{html.escape(t)}</th>" for t in imp.values)
        rows = [
            f'<tr><td class="l">{html.escape(p)}</td>'
            + "".join(f"<td>{_fmt(imp.values[t].get(p), 3)}</td>" for t in imp.values)
            + "</tr>"
            for p in params
        ]
        parts.append(f"<table><tr>{head}</tr>{''.join(rows)}</table>")
        parts.append(
            f"<p class=muted>Method: {imp.method} (Optuna), normalised to sum to 1 per target; "
            "computed over the searched trials (the named references have no sampled parameters); "
            "parameters under their MLflow names.</p>"
        )
    if imp.no_signal:
        parts.append(
            f"<p class=no-signal><b>No signal</b> for {html.escape(', '.join(imp.no_signal))}: every "
            f"parameter's importance is 0 ({imp.method} found no parameter that separates the better "
            "trials from the rest), so no bars are drawn.</p>"
        )
    parts += [f"<p class=muted>{html.escape(n)}</p>" for n in imp.notes]
    return "".join(parts) or "<p>No importances.</p>"


def _utilisation_html(study: optuna.Study, objectives: Sequence[Objective]) -> str:
    rows = front_table(study, objectives)
    by_number = {t.number: t for t in study.get_trials(deepcopy=False)}
    figures = []
    for r in rows:
        util = by_number[r.trial].user_attrs.get(UTILISATION_ATTR)
        if util:
            png = _figures.utilisation_png(util, f"trial {r.trial} ({r.name})")
            figures.append(f"<figure>{_img(png, f'utilisation of trial {r.trial}')}</figure>")
    if not figures:
        return (
            "<p>No expert-utilisation data for the front's models (they have no gates, or the "
            "study predates recording it).</p>"
        )
    return (
        "<p class=muted>Mean gate weight of each expert on the validation split, per gate "
        "(the PLE paper's expert-utilisation analysis); blank: the gate cannot select that expert.</p>"
        f"<div class=grid>{''.join(figures)}</div>"
    )


def _rung_values(t: optuna.trial.FrozenTrial, objectives: Sequence[Objective]) -> str:
    """``income:auc 0.8812, marital:auc 0.9501``: a stopped trial's task objectives at its rung."""
    decision = stop_decision(t)
    values = decision.get("values") if decision else None
    names = [o.name for o in objectives if not o.is_cost]
    if not isinstance(values, list) or len(values) != len(names):
        return ""
    return ", ".join(f"{n} {_fmt(float(v))}" for n, v in zip(names, values, strict=True))


def _failures_html(study: optuna.Study, objectives: Sequence[Objective]) -> str:
    bad = [t for t in study.get_trials(deepcopy=False) if t.state in (TrialState.FAIL, TrialState.PRUNED)]
    if not bad:
        return "<p>None.</p>"
    rows = []
    for t in bad:
        decision = stop_decision(t)
        where = f"rung {decision['rung']}, epoch {decision.get('epoch', '?')}" if decision else ""
        reason = t.user_attrs.get("fail_reason") or t.user_attrs.get(PRUNED_REASON_ATTR) or ""
        rows.append(
            f'<tr><td>{t.number}</td><td class="l">{t.state.name.lower()}</td>'
            f'<td class="l">{html.escape(where)}</td><td class="l">{_rung_values(t, objectives)}</td>'
            f'<td class="l">{html.escape(str(reason))}</td></tr>'
        )
    head = (
        '<tr><th>trial</th><th class="l">state</th><th class="l">stopped at</th>'
        '<th class="l">values there (validation)</th><th class="l">reason</th></tr>'
    )
    return f"<table>{head}{''.join(rows)}</table>"


def _epochs_html(study: optuna.Study, objectives: Sequence[Objective], pruning: Any) -> str:
    """The metric path of every trial over epochs with the rungs marked, and per rung how
    many trials went on and how many stopped there."""
    trials = study.get_trials(deepcopy=False)
    paths = epoch_paths(study, objectives)
    longest = max((len(p.values) for p in paths), default=0)
    rungs = rung_epochs(trials, longest, pruning)
    parts = [_img(_figures.epoch_paths_png(paths, objectives, rungs), "task metrics over epochs")]
    parts.append(
        "<p class=muted>Validation value of each task objective after every epoch. Stopped trials "
        "(purple) end with an x at the rung where they stopped; dashed lines are the rungs.</p>"
    )
    counts = rung_counts(trials)
    if counts:
        rows = "".join(
            f"<tr><td>{c.rung}</td><td>{_fmt(c.epoch)}</td><td>{c.continued}</td><td>{c.stopped}</td></tr>"
            for c in counts
        )
        parts.append(
            f"<table><tr><th>rung</th><th>epoch</th><th>went on</th><th>stopped</th></tr>{rows}</table>"
        )
    return "".join(parts)


def _fidelity_note(trials: Sequence[optuna.trial.FrozenTrial]) -> str:
    """Says that stopped trials are left out of the front, its gains and ``export``."""
    n = sum(t.state == TrialState.PRUNED for t in trials)
    if not n:
        return ""
    return (
        f"<p class=muted>The front, its gains over single-task and <code>mtlsearch export</code> use "
        f"completed (full-fidelity) trials only: the {n} trial{'s' * (n != 1)} stopped early "
        "are left out, whatever their values when they stopped.</p>"
    )


def render_report(study: optuna.Study) -> str:
    """The report as an HTML string."""
    objectives = objectives_of(study)
    settings = settings_of(study)
    trials = study.get_trials(deepcopy=False)
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    points = trial_points(study, objectives)
    history = hypervolume_history(study, objectives)
    title = f"mtlsearch study {study.study_name}"
    pairs = _figures.objective_pairs(objectives)
    svgs = "".join(
        f"<figure>{_figures.pareto_svg(points, objectives, pair, uid=f'p{k}')}</figure>"
        for k, pair in enumerate(pairs)
    )
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    hv = f"{history[-1][1]:.6g}" if history else "–"
    options = ", ".join(f"{k}={v}" for k, v in settings.dataset_options.items())
    stopped = rung_text(rung_counts(trials))
    facts = [
        ("dataset", settings.dataset + (f" ({options})" if options else "")),
        ("objectives", ", ".join(f"{o.name} ({o.direction})" for o in objectives)),
        ("sampler, seed", f"{settings.sampler}, {settings.seed}"),
        ("trials", f"{summary} (budget {settings.n_trials})"),
        ("hypervolume", hv),
        ("front size", str(sum(p.rank == 0 for p in points))),
        ("pruning", pruning_text(settings.pruning)),
    ]
    if stopped:
        facts.append(("stopped at rungs", f"{stopped} (full-fidelity trials only on the front)"))
    fact_rows = "".join(
        f'<tr><th class="l">{k}</th><td class="l">{html.escape(v)}</td></tr>' for k, v in facts
    )
    sections = [
        f"<h1>{html.escape(title)}</h1>",
        f"<table>{fact_rows}</table>",
        "<h2>Pareto front</h2>",
        _img(_figures.pareto_png(points, objectives, title), "Pareto plot"),
        "<p class=muted>Interactive: hover a point for its trial and values; click the legend to "
        "hide the dominated trials.</p>",
        f"<div class=grid>{svgs}</div>",
        "<h2>Front members and their gain over single-task</h2>",
        _front_html(study, objectives),
        _fidelity_note(trials),
        "<h2>Hypervolume over trials</h2>",
        _img(_figures.hypervolume_png(history), "hypervolume over trials"),
        "<p class=muted>Against one reference point for the whole curve (chance level for AUC "
        "and accuracy, 1.1 x the worst value seen for losses and costs).</p>",
        "<h2>Task metrics over epochs</h2>",
        _epochs_html(study, objectives, settings.pruning),
        "<h2>Parameter importances</h2>",
        _importance_html(param_importances(study, objectives)),
        "<h2>Expert utilisation of the front's models</h2>",
        _utilisation_html(study, objectives),
        "<h2>Failed and pruned trials</h2>",
        _failures_html(study, objectives),
        f"<p class=muted>mtlsearch {mtlsearch.__version__}, "
        f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')}</p>",
    ]
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        f"<title>{html.escape(title)}</title><style>{_CSS}{_figures.PARETO_CSS}</style></head>"
        f"<body>{''.join(sections)}</body></html>"
    )


def write_report(study: optuna.Study, out: str | Path) -> Path:
    """Write the report to ``out`` (written to a temporary file, then renamed)."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out}: the report is HTML; name the file .html")
    if out.is_dir():
        raise UserError(f"--out {out}: is a directory; give a file name ending in .html")
    text = render_report(study)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        _readable(Path(tmp))
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def _readable(path: Path) -> None:
    """mkstemp makes owner-only files; a report is meant to be shared (umask applies)."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
