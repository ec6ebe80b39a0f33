"""The layering rule, checked in a fresh interpreter: importing a layer loads nothing above it
(the builder knows no Optuna, the trainer knows no MLflow, nothing imports the CLI)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

FORBIDDEN = {
    "mtlsearch.arch": ["optuna", "mlflow", "mtlsearch.data", "mtlsearch.train", "mtlsearch.search"],
    "mtlsearch.data": ["optuna", "mlflow", "mtlsearch.train", "mtlsearch.search"],
    "mtlsearch.train": ["optuna", "mlflow", "mtlsearch.search", "mtlsearch.tracking"],
    "mtlsearch.search": ["mlflow", "mtlsearch.tracking", "mtlsearch.cli"],
    "mtlsearch.tracking": ["mtlsearch.cli"],
}


@pytest.mark.parametrize("layer", sorted(FORBIDDEN))
def test_a_layer_loads_nothing_above_it(layer):
    code = f"import json, sys; import {layer}; print(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out))
    above = [m for m in FORBIDDEN[layer] if m in loaded]
    assert above == [], f"importing {layer} loaded {above}"
