"""What a trial *is*, in one short line: for the front table, front.csv and the report."""

from __future__ import annotations

from typing import Any


def describe_config(config: Any) -> str:
    """A short architecture summary from a trial's ``config`` user attr (an ExperimentConfig
    as a dict): per level ``<shared>s+<specific>p[<widths>] <select>`` plus ``+sg`` for a
    shared gate and the gate kind (with its k)/sharing/input, batch norm, AdaTT fusion, HoME's
    expert norm and the expert activation when not the default; STEM's task embedding width
    when set (``task-emb 8``); then the towers, lr, and
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
            gate += " no-gate" if kind == "none" else f" {_GATE_LABELS.get(kind, kind)}{lv.get('top_k', '')}"
        if lv.get("gate_sharing", "per_task") != "per_task":
            gate += f" {lv['gate_sharing']}-gate"
        if lv.get("gate_input", "level") != "level":
            gate += f" {lv['gate_input']}-input"
        if lv.get("norm", "none") != "none":
            gate += f" {lv['norm']}norm"
        if lv.get("fusion", "gate") != "gate":
            gate += f" {lv['fusion']}"
        if lv.get("expert_norm", "none") != "none":
            gate += f" expert-{lv['expert_norm']}norm"
        if lv.get("activation", "relu") != "relu":
            gate += f" {lv['activation']}"
        parts.append(f"L{i + 1} {lv.get('n_shared', 0)}s+{spec}p[{widths}] {gate}")
    task_dim = (model.get("inputs") or {}).get("task_embedding_dim", 0)
    if task_dim:
        parts.append(f"task-emb {task_dim}")
    chained = _describe_chained(model.get("tasks") or [])
    if chained:
        parts.append(chained)
    towers = model.get("towers") or []
    if towers:
        parts.append(f"tower [{','.join(map(str, towers[0].get('hidden', [])))}]")
    if "lr" in training:
        parts.append(f"lr {training['lr']:.3g}")
    balancing = _describe_balancing(training)
    if balancing:
        parts.append(balancing)
    return " | ".join(parts) or "-"


def _describe_chained(tasks: list[Any]) -> str:
    """ESMM products and factor losses: ``ctcvr=ctr*cvr cvr:none`` (``cvr:ips0.1``)."""
    out = [f"{t['name']}={'*'.join(t['product_of'])}" for t in tasks if t.get("product_of")]
    for t in tasks:
        if t.get("loss", "direct") != "direct":
            weight = t.get("ips_weight")
            out.append(f"{t['name']}:{t['loss']}{_number(weight) if weight is not None else ''}")
    return " ".join(out)


#: How a gate kind with ``top_k`` is shown, followed by its k: ``top2``, ``dselect_k2``.
_GATE_LABELS = {"topk": "top", "dselect_k": "dselect_k", "noisy_top_k": "noisy_top"}


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
