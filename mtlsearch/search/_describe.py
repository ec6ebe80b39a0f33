"""What a trial *is*, in one short line: for the front table, front.csv and the report."""

from __future__ import annotations

from typing import Any


def describe_config(config: Any) -> str:
    """A short architecture summary from a trial's ``config`` user attr (an ExperimentConfig
    as a dict): per level ``<shared>s+<specific>p[<widths>] <select>`` plus ``+sg`` for a
    shared gate and the gate kind/sharing/input when not the default; then the towers, lr, and
    the task balancing when not the plain sum (``fixed`` without weights): the method with
    its options, per-task weights/gamma and ``pos_weight``. E.g.
    ``L1 2s+1p[16] own+shared+sg | L2 2s+1p[16] own+shared | tower [8] | lr 0.005 | dwa(temperature=2)``.
    """
    if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
        return "-"
    try:
        return _describe(config)
    except (TypeError, ValueError, KeyError, AttributeError):  # a hand-made or older config
        return "-"


def _listed(value: Any) -> list[Any]:
    """One value or a list of them (a count per task may be written once for all tasks)."""
    return list(value) if isinstance(value, list | tuple) else [value]


def _describe(config: dict[str, Any]) -> str:
    model, training = config["model"], config.get("training") or {}
    parts = []
    for i, lv in enumerate(model.get("levels") or []):
        specific = _listed(lv.get("n_specific", 0))
        spec = ",".join(map(str, specific)) if len(set(specific)) > 1 else str(specific[0] if specific else 0)
        widths = ",".join(map(str, _listed(lv.get("expert_hidden", []))))
        gate = lv.get("select", "?") + ("+sg" if lv.get("shared_gate") else "")
        if lv.get("gate_kind", "softmax") != "softmax":
            kind = lv["gate_kind"]
            gate += (
                " no-gate" if kind == "none" else f" top{lv.get('top_k')}" if kind == "topk" else f" {kind}"
            )
        if lv.get("gate_sharing", "per_task") != "per_task":
            gate += f" {lv['gate_sharing']}-gate"
        if lv.get("gate_input", "level") != "level":
            gate += f" {lv['gate_input']}-input"
        if lv.get("norm", "none") != "none":
            gate += f" {lv['norm']}norm"
        parts.append(f"L{i + 1} {lv.get('n_shared', 0)}s+{spec}p[{widths}] {gate}")
    towers = model.get("towers") or []
    if towers:
        parts.append(f"tower [{','.join(map(str, towers[0].get('hidden', [])))}]")
    if "lr" in training:
        parts.append(f"lr {training['lr']:.3g}")
    balancing = _describe_balancing(training)
    if balancing:
        parts.append(balancing)
    return " | ".join(parts) or "-"


def _number(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _describe_balancing(training: dict[str, Any]) -> str:
    """``method(option=value, ..., weights.task=value)`` and ``pos_weight(task=value)``;
    empty for the plain sum. ``loss_weighting`` is a method name or the config's mapping."""
    lw = training.get("loss_weighting") or {}
    if isinstance(lw, str):
        lw = {"method": lw}
    method = lw.get("method", "fixed")
    items = []
    for key, value in lw.items():
        if key == "method":
            continue
        if isinstance(value, dict):  # weights / gamma: one value per task
            items += [f"{key}.{task}={_number(v)}" for task, v in value.items()]
        else:
            items.append(f"{key}={_number(value)}")
    parts = [] if method == "fixed" and not items else [f"{method}({', '.join(items)})" if items else method]
    pos = training.get("pos_weight") or {}
    if isinstance(pos, dict) and pos:
        parts.append(f"pos_weight({', '.join(f'{t}={_number(v)}' for t, v in pos.items())})")
    return " ".join(parts)
