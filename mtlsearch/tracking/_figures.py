"""Figures of a study: Pareto plots, hypervolume, importances, expert-utilisation heat-maps.

PNGs come from matplotlib's object API (``Figure`` + the Agg canvas): no pyplot global
state, so worker threads can draw at the same time. The interactive Pareto plot is a small
self-contained SVG (hover a point for its trial, model and values; a click on the legend
hides the dominated trials), so neither the report nor the MLflow artifact needs plotly or
a network connection.
"""

from __future__ import annotations

import html
import io
import itertools
import math
from collections.abc import Sequence

import numpy as np

from mtlsearch.search import Objective
from mtlsearch.tracking._summary import EpochPath, TrialPoint, utilisation_matrix

_MAX_PAIRS = 6
_FRONT = "#d62728"
_OTHER = "#9aa5b1"
_PRESET = "#1f77b4"
_SINGLE = "#ff9f1c"
_STOPPED = "#7b3fa0"


def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _axis_label(o: Objective) -> str:
    return f"{o.name} ({'higher' if o.direction == 'maximize' else 'lower'} is better)"


def objective_pairs(objectives: Sequence[Objective]) -> list[tuple[int, int]]:
    """Which objective pairs to plot: task metrics against each other first, then costs."""
    pairs = list(itertools.combinations(range(len(objectives)), 2))
    pairs.sort(key=lambda p: (objectives[p[0]].is_cost + objectives[p[1]].is_cost, p))
    return pairs[:_MAX_PAIRS]


def _staircase(xs: np.ndarray, ys: np.ndarray, ox: Objective, oy: Objective) -> tuple[list, list]:
    """The 2-D front of the points as a step line (in the plot's own units)."""
    sx, sy = -ox.sign(), -oy.sign()  # to losses
    pts = sorted(zip(xs * sx, ys * sy, strict=True))
    front, best = [], math.inf
    for x, y in pts:
        if y < best:
            front.append((x, y))
            best = y
    line_x, line_y = [], []
    for i, (x, y) in enumerate(front):
        if i:
            line_x.append(x * sx)
            line_y.append(front[i - 1][1] * sy)
        line_x.append(x * sx)
        line_y.append(y * sy)
    return line_x, line_y


#: Where a label may go around its point (offset in points, alignment), tried in order.
_LABEL_SPOTS: tuple[tuple[float, float, str, str], ...] = tuple(
    (dx * r, dy * r, ha, va)
    for r in (1, 2.2, 3.6)
    for dx, dy, ha, va in (
        (5, 4, "left", "bottom"),
        (5, -4, "left", "top"),
        (-5, 4, "right", "bottom"),
        (-5, -4, "right", "top"),
        (0, 7, "center", "bottom"),
        (0, -7, "center", "top"),
    )
)


def _overlaps(box, boxes) -> bool:
    return any(box.overlaps(b) for b in boxes)


def _place_labels(
    ax, items: Sequence[tuple[float, float, str]], markers: Sequence[tuple[float, float]]
) -> None:
    """Write each ``(x, y, text)`` beside its point at the first spot that stays inside the
    axes and overlaps no other label or marker (greedy, in drawing order); a
    label with no free spot goes to the farthest one with a thin leader line."""
    fig = ax.figure
    fig.canvas.draw()  # the constrained layout is settled: pixel positions are final
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer).padded(-2)
    from matplotlib.transforms import Bbox

    taken = []

    for x, y in ax.transData.transform(list(markers)) if len(markers) else []:
        taken.append(Bbox.from_extents(x - 3, y - 3, x + 3, y + 3))  # the points themselves
    for x, y, text in items:
        for k, (dx, dy, ha, va) in enumerate(_LABEL_SPOTS):
            last = k == len(_LABEL_SPOTS) - 1
            note = ax.annotate(
                text,
                (x, y),
                xytext=(dx, dy),
                textcoords="offset points",
                ha=ha,
                va=va,
                fontsize=7,
                zorder=5,
                arrowprops={"arrowstyle": "-", "lw": 0.5, "color": "0.4"} if last else None,
            )
            box = note.get_window_extent(renderer).padded(1)
            fits = inside.contains(box.x0, box.y0) and inside.contains(box.x1, box.y1)
            if (fits and not _overlaps(box, taken)) or last:
                taken.append(box)
                break
            note.remove()


def pareto_png(points: Sequence[TrialPoint], objectives: Sequence[Objective], title: str) -> bytes:
    """Every completed trial per objective pair; the front in red, the named architectures
    as squares, the single-task reference as an orange star. Front members and named
    architectures are labelled with their trial number (and name), placed so that labels
    neither overlap nor leave the axes."""
    pairs = objective_pairs(objectives)
    cols = min(3, max(1, len(pairs)))
    rows = max(1, math.ceil(len(pairs) / cols))
    fig = _figure(5.2 * cols, 4.4 * rows)
    fig.suptitle(title)
    if not pairs or not points:
        fig.text(0.5, 0.5, "no completed trial yet", ha="center")
        return _png(fig)
    values = np.array([p.values for p in points], dtype=float)
    on_front = np.array([p.rank == 0 for p in points])
    axes = []
    for k, (i, j) in enumerate(pairs):
        ax = fig.add_subplot(rows, cols, k + 1)
        ax.margins(0.12)  # room for labels at the edges
        x, y = values[:, i], values[:, j]
        ax.scatter(x[~on_front], y[~on_front], s=22, c=_OTHER, label="dominated", zorder=2)
        ax.scatter(x[on_front], y[on_front], s=40, c=_FRONT, label="Pareto front", zorder=3)
        if len(objectives) == 2:  # the 2-D front as a step line
            lx, ly = _staircase(x[on_front], y[on_front], objectives[i], objectives[j])
            ax.plot(lx, ly, c=_FRONT, lw=1, alpha=0.6, zorder=1)
        for p, px, py in zip(points, x, y, strict=True):
            if p.preset == "single_task":
                ax.scatter([px], [py], marker="*", s=220, c=_SINGLE, edgecolors="k", zorder=4)
            elif p.preset:
                ax.scatter([px], [py], marker="s", s=46, facecolors="none", edgecolors=_PRESET, zorder=4)
        labelled = [(float(px), float(py), p.label) for p, px, py in zip(points, x, y, strict=True)]
        wanted = [item for p, item in zip(points, labelled, strict=True) if p.rank == 0 or p.preset]
        axes.append((ax, wanted, list(zip(x.tolist(), y.tolist(), strict=True))))
        ax.set_xlabel(_axis_label(objectives[i]))
        ax.set_ylabel(_axis_label(objectives[j]))
        ax.grid(alpha=0.3)
        if k == 0:
            from matplotlib.lines import Line2D

            handles = [
                Line2D([], [], ls="", marker="o", c=_FRONT, label="Pareto front"),
                Line2D([], [], ls="", marker="o", c=_OTHER, label="dominated"),
                Line2D([], [], ls="", marker="s", mfc="none", mec=_PRESET, label="named architecture"),
                Line2D([], [], ls="", marker="*", ms=12, c=_SINGLE, mec="k", label="single-task"),
            ]
            # outside the axes: "best" would move it onto labels placed afterwards
            fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=4)
    for ax, items, markers in axes:
        _place_labels(ax, items, markers)
    return _png(fig)


def hypervolume_png(history: Sequence[tuple[int, float]], title: str = "Hypervolume over trials") -> bytes:
    fig = _figure(6.4, 3.6)
    ax = fig.add_subplot()
    if history:
        xs, ys = zip(*history, strict=True)
        ax.step(xs, ys, where="post", c=_PRESET)
        ax.plot(xs, ys, "o", ms=3, c=_PRESET)
    ax.set_xlabel("finished trials")
    ax.set_ylabel("hypervolume")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return _png(fig)


def importance_png(importances: dict[str, dict[str, float]]) -> bytes:
    """One horizontal bar chart per target (``joint`` and each objective)."""
    targets = [t for t, imp in importances.items() if imp]
    fig = _figure(
        5.0 * max(1, len(targets)), 0.6 + 0.32 * max((len(v) for v in importances.values()), default=1)
    )
    for k, target in enumerate(targets):
        ax = fig.add_subplot(1, len(targets), k + 1)
        items = sorted(importances[target].items(), key=lambda kv: kv[1])
        ax.barh([n for n, _ in items], [v for _, v in items], color=_PRESET)
        ax.set_title(target, fontsize=10)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=8)
    return _png(fig)


def utilisation_png(utilisation: dict[str, dict[str, float]], title: str) -> bytes:
    """Gates x experts heat-map per level (blank where a gate may not select the expert)."""
    levels = utilisation_matrix(utilisation)
    fig = _figure(
        max(4.5, 1.6 + 0.75 * max((len(e) for _, _, e, _ in levels), default=1)) * max(1, len(levels)),
        1.4 + 0.45 * max((len(g) for _, g, _, _ in levels), default=1),
    )
    fig.suptitle(title)
    if not levels:
        fig.text(0.5, 0.5, "no gates (single-task or shared-bottom)", ha="center")
        return _png(fig)
    image = None
    for k, (level, gates, experts, matrix) in enumerate(levels):
        ax = fig.add_subplot(1, len(levels), k + 1)
        image = ax.imshow(np.ma.masked_invalid(matrix), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(experts)), experts, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(gates)), gates, fontsize=8)
        ax.set_title(level, fontsize=10)
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                if np.isfinite(matrix[i, j]):
                    color = "w" if matrix[i, j] < 0.6 else "k"
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    if image is not None:
        fig.colorbar(image, ax=fig.axes, shrink=0.8, label="mean gate weight")
    return _png(fig)


def epoch_paths_figure(
    paths: Sequence[EpochPath],
    objectives: Sequence[Objective],
    rungs: Sequence[tuple[int, int]],
    title: str = "Task metrics over epochs",
):  # -> matplotlib.figure.Figure
    """Each trial's validation value of every task objective after each epoch (one panel per
    task objective; x: epoch, 1-based). Completed trials are full lines (front members red,
    the others grey); trials stopped early (PRUNED: at a rung, or by another rule) are purple
    and end at their last epoch with an ``x``; each rung is a dashed vertical line at its
    epoch, labelled ``rung k``. Artists carry ids for inspection: ``trial-<n>`` (a path),
    ``stop-<n>`` (the end mark), ``rung-<k>`` (a rung line in each panel). Failed and running
    trials are not drawn."""
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    tasks = [(i, o) for i, o in enumerate(o for o in objectives if not o.is_cost)]
    cols = min(3, max(1, len(tasks)))
    rows = max(1, math.ceil(len(tasks) / cols))
    fig = _figure(5.2 * cols, 3.8 * rows + 0.4)
    fig.suptitle(title)
    drawn = [p for p in paths if p.state in ("COMPLETE", "PRUNED")]
    if not tasks or not drawn:
        fig.text(0.5, 0.5, "no per-epoch values recorded", ha="center")
        return fig
    order = sorted(drawn, key=lambda p: (p.state == "COMPLETE", p.on_front, p.number))  # front on top
    for k, (i, o) in enumerate(tasks):
        ax = fig.add_subplot(rows, cols, k + 1)
        for p in order:
            xs = list(range(1, len(p.values) + 1))
            ys = [v[i] for v in p.values]
            if p.state == "COMPLETE":
                color, width, z = (_FRONT, 1.6, 3) if p.on_front else (_OTHER, 1.0, 2)
                (line,) = ax.plot(xs, ys, c=color, lw=width, zorder=z, marker="o" if len(xs) == 1 else None)
            else:
                (line,) = ax.plot(xs, ys, c=_STOPPED, lw=1.0, alpha=0.85, zorder=2)
                (end,) = ax.plot(xs[-1:], ys[-1:], ls="", marker="x", ms=7, mew=1.6, c=_STOPPED, zorder=4)
                end.set_gid(f"stop-{p.number}")
            line.set_gid(f"trial-{p.number}")
        for rung, epoch in rungs:
            ax.axvline(epoch, ls="--", lw=0.9, c="0.35", zorder=1).set_gid(f"rung-{rung}")
            ax.text(epoch, 0.99, f" rung {rung}", transform=ax.get_xaxis_transform(), ha="left",
                    va="top", fontsize=7, color="0.3")  # fmt: skip
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(_axis_label(o))
        ax.grid(alpha=0.3)
    handles = [
        Line2D([], [], c=_FRONT, lw=1.6, label="completed, Pareto front"),
        Line2D([], [], c=_OTHER, lw=1.0, label="completed"),
        Line2D([], [], c=_STOPPED, lw=1.0, marker="x", mew=1.6, label="stopped early"),
    ]
    if rungs:
        handles.append(Line2D([], [], ls="--", lw=0.9, c="0.35", label="rung"))
    fig.legend(handles=handles, fontsize=8, loc="outside lower center", ncols=len(handles))
    return fig


def epoch_paths_png(
    paths: Sequence[EpochPath],
    objectives: Sequence[Objective],
    rungs: Sequence[tuple[int, int]],
    title: str = "Task metrics over epochs",
) -> bytes:
    """:func:`epoch_paths_figure` as PNG bytes."""
    return _png(epoch_paths_figure(paths, objectives, rungs, title))


# ---- interactive SVG ---------------------------------------------------------------------------
_SVG_W, _SVG_H, _PAD = 460, 360, 56


def _scale(values: np.ndarray, lo_px: float, hi_px: float) -> np.ndarray:
    lo, hi = float(np.min(values)), float(np.max(values))
    span = hi - lo if hi > lo else (abs(hi) or 1.0)
    lo -= 0.06 * span
    hi += 0.06 * span
    return lo_px + (values - lo) / (hi - lo) * (hi_px - lo_px)


def _ticks(values: np.ndarray) -> tuple[float, float]:
    return float(np.min(values)), float(np.max(values))


def pareto_svg(
    points: Sequence[TrialPoint], objectives: Sequence[Objective], pair: tuple[int, int], uid: str = "p"
) -> str:
    """One objective pair as an inline SVG; hover a point for its details."""
    i, j = pair
    ox, oy = objectives[i], objectives[j]
    if not points:
        return "<p>no completed trial yet</p>"
    values = np.array([p.values for p in points], dtype=float)
    xs = _scale(values[:, i], _PAD, _SVG_W - 16)
    ys = _scale(values[:, j], _SVG_H - _PAD, 16)
    parts = [
        f'<svg class="pareto" id="{uid}" viewBox="0 0 {_SVG_W} {_SVG_H}" width="{_SVG_W}" '
        f'height="{_SVG_H}" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif" font-size="11">',
        f'<rect x="{_PAD}" y="16" width="{_SVG_W - _PAD - 16}" height="{_SVG_H - _PAD - 16}" '
        'fill="#fafafa" stroke="#ccc"/>',
    ]
    for axis, vals, o in (("x", values[:, i], ox), ("y", values[:, j], oy)):
        lo, hi = _ticks(vals)
        if axis == "x":
            parts += [
                f'<text x="{_PAD}" y="{_SVG_H - _PAD + 14}">{lo:.4g}</text>',
                f'<text x="{_SVG_W - 16}" y="{_SVG_H - _PAD + 14}" text-anchor="end">{hi:.4g}</text>',
                f'<text x="{(_SVG_W + _PAD) / 2}" y="{_SVG_H - 14}" text-anchor="middle">'
                f"{html.escape(_axis_label(o))}</text>",
            ]
        else:
            parts += [
                f'<text x="{_PAD - 4}" y="{_SVG_H - _PAD}" text-anchor="end">{lo:.4g}</text>',
                f'<text x="{_PAD - 4}" y="24" text-anchor="end">{hi:.4g}</text>',
                f'<text transform="translate(14,{(_SVG_H - _PAD) / 2}) rotate(-90)" text-anchor="middle">'
                f"{html.escape(_axis_label(o))}</text>",
            ]
    order = sorted(range(len(points)), key=lambda k: points[k].rank == 0)  # front drawn last
    labels = _svg_labels(points, xs, ys)
    for k in order:
        p = points[k]
        details = "\n".join(f"{o.name}: {v:.6g}" for o, v in zip(objectives, p.values, strict=True))
        tip = html.escape(f"trial {p.number} · {p.preset or 'searched'} · rank {p.rank}\n{details}")
        cls = "front" if p.rank == 0 else "dominated"
        x, y = xs[k], ys[k]
        if p.preset == "single_task":
            shape = (
                f'<polygon points="{x},{y - 8} {x + 2.4},{y - 2.5} {x + 7.6},{y - 2.5} {x + 3.4},{y + 1} '
                f"{x + 5},{y + 6.5} {x},{y + 3.3} {x - 5},{y + 6.5} {x - 3.4},{y + 1} {x - 7.6},{y - 2.5} "
                f'{x - 2.4},{y - 2.5}" fill="{_SINGLE}" stroke="#000" stroke-width="0.6"/>'
            )
        elif p.preset:
            color = _FRONT if p.rank == 0 else _OTHER
            shape = (
                f'<rect x="{x - 5}" y="{y - 5}" width="10" height="10" fill="{color}" '
                f'stroke="{_PRESET}" stroke-width="2"/>'
            )
        else:
            color = _FRONT if p.rank == 0 else _OTHER
            shape = f'<circle cx="{x}" cy="{y}" r="{5 if p.rank == 0 else 4}" fill="{color}"/>'
        label = ""
        if k in labels:
            lx, ly, anchor = labels[k]
            label = (
                f'<text x="{lx:.1f}" y="{ly:.1f}" text-anchor="{anchor}" font-size="10">'
                f"{html.escape(p.label)}</text>"
            )
        parts.append(f'<g class="{cls}"><title>{tip}</title>{shape}{label}</g>')
    parts.append(
        f'<g class="legend" style="cursor:pointer" onclick="(function(s){{s.classList.toggle(\'hide-dom\')}})'
        f"(document.getElementById('{uid}'))\">"
        f'<circle cx="{_PAD + 10}" cy="28" r="5" fill="{_FRONT}"/>'
        f'<text x="{_PAD + 18}" y="32">front</text>'
        f'<circle cx="{_PAD + 60}" cy="28" r="4" fill="{_OTHER}"/>'
        f'<text x="{_PAD + 68}" y="32">dominated (click: hide)</text></g>'
    )
    parts.append("</svg>")
    return "".join(parts)


def _svg_labels(
    points: Sequence[TrialPoint], xs: np.ndarray, ys: np.ndarray
) -> dict[int, tuple[float, float, str]]:
    """Where to write the label of each front member and named architecture: the first of
    a few spots around the point that stays in the plot and overlaps no other label or
    point (text width estimated at 6 px per character); else the last spot tried."""
    boxes = [(x - 4, y - 4, x + 4, y + 4) for x, y in zip(xs, ys, strict=True)]
    lo_x, hi_x, lo_y, hi_y = _PAD, _SVG_W - 16, 40, _SVG_H - _PAD  # below the legend row
    out: dict[int, tuple[float, float, str]] = {}
    for k, p in enumerate(points):
        if p.rank != 0 and not p.preset:
            continue
        width, x, y = 6.0 * len(p.label), float(xs[k]), float(ys[k])
        spots = [
            (x + dx * r, y + dy * r, "start" if dx > 0 else "end")
            for r in (1, 2, 3)
            for dx, dy in ((7, -5), (7, 12), (-7, -5), (-7, 12))
        ]
        for sx, sy, anchor in spots:
            x0 = sx if anchor == "start" else sx - width
            box = (x0, sy - 9, x0 + width, sy + 2)
            inside = box[0] >= lo_x and box[2] <= hi_x and box[1] >= lo_y and box[3] <= hi_y
            free = all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in boxes)
            if inside and free:
                break
        out[k] = (sx, sy, anchor)
        boxes.append(box)
    return out


PARETO_CSS = (
    "svg.pareto g.front, svg.pareto g.dominated{cursor:default}"
    "svg.pareto g:hover circle, svg.pareto g:hover rect{stroke:#000;stroke-width:1.5}"
    "svg.pareto.hide-dom g.dominated{display:none}"
)


def pareto_html(points: Sequence[TrialPoint], objectives: Sequence[Objective], title: str) -> str:
    """A standalone HTML page with one interactive SVG per objective pair."""
    svgs = "".join(
        pareto_svg(points, objectives, pair, uid=f"p{k}")
        for k, pair in enumerate(objective_pairs(objectives))
    )
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif}}{PARETO_CSS}</style>"
        f"</head><body><h2>{html.escape(title)}</h2><p>Hover a point for its trial and values; "
        "squares are the named architectures, the star the single-task reference; the numbers "
        "are trial numbers.</p>"
        f"{svgs}</body></html>"
    )
