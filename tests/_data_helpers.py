"""Small user tables and spec files for the data-layer tests (no test functions here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml


def shop_frame(n: int = 600, seed: int = 0) -> pd.DataFrame:
    """A toy e-commerce table: two categorical inputs, numeric inputs (one with gaps), and
    labels of every kind, including a conversion that can only happen after a click."""
    rng = np.random.default_rng(seed)
    click = (rng.random(n) < 0.3).astype(int)
    buy = click * (rng.random(n) < 0.4).astype(int)
    price = rng.gamma(2.0, 10.0, n)
    price[rng.random(n) < 0.05] = np.nan
    return pd.DataFrame(
        {
            "rid": np.arange(n),
            "uid": [f"u{k}" for k in rng.integers(0, 40, n)],
            "device": rng.choice(["ios", "android", "web"], n),
            "price": price,
            "visits": rng.integers(0, 20, n),
            "click": click,
            "buy": buy,
            "rating": rng.normal(3.0, 1.0, n).round(2),
            "tier": rng.choice(["gold", "silver", "bronze"], n, p=[0.2, 0.3, 0.5]),
            "status": rng.choice(["yes", "no"], n),
        }
    )


def shop_spec(**overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": "shop",
        "files": {"path": "shop.csv"},
        "split": {"valid": 0.2, "test": 0.2, "seed": 3},
        "features": {"categorical": ["uid", "device"], "numeric": "auto", "exclude": ["status"]},
        "tasks": [
            {"name": "ctr", "label": "click", "kind": "binary"},
            {"name": "cvr", "label": "buy", "kind": "binary", "where": {"click": 1}},
            {"name": "rating", "label": "rating", "kind": "regression"},
            {"name": "tier", "label": "tier", "kind": "multiclass"},
        ],
    }
    spec.update(overrides)
    return spec


def write_spec(folder: Path, spec: dict[str, Any], name: str = "spec.yaml") -> Path:
    path = folder / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def write_shop(folder: Path, n: int = 600, seed: int = 0, **overrides: Any) -> Path:
    """shop.csv and spec.yaml in ``folder``; returns the spec's path."""
    shop_frame(n, seed).to_csv(folder / "shop.csv", index=False)
    return write_spec(folder, shop_spec(**overrides))


def listing(folder: Path) -> dict[str, int]:
    """Every file below ``folder`` with its size: to show that a failure wrote nothing."""
    return {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))}
