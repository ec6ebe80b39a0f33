"""Shared test helpers.

``shared_data_dir()`` is the one place that knows where the shared data sets live
(Census-Income, the Ali-CCP / AliExpress / KuaiRand samples): ``$MTLSEARCH_DATA`` (or its
alias ``$MTLSEARCH_SHARED_DATA``), else ``<repo>/../shared/data``. Use the fixture of the
same name in tests, or call the function (``from conftest import shared_data_dir``) in
module- or session-scoped fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test`` runs ``-n auto``), each worker process is pinned to
    one core and uses one torch thread, and the subprocesses it starts inherit the pin (the
    CLI's default thread count reads the affinity mask). Without this, two workers' OpenMP
    thread pools would fight over the same cores (7-18x slower epochs, see pitfalls.md)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw") or not hasattr(os, "sched_setaffinity"):
        return
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[int(worker[2:]) % len(cores)]})
    import torch

    torch.set_num_threads(1)


def shared_data_dir(*parts: str) -> Path:
    """The shared data folder (or ``parts`` below it).

    When it is missing the test is skipped on a developer's machine, but fails under CI
    (``CI=true``): there a skip would let a broken checkout pass silently.
    """
    env = os.environ.get("MTLSEARCH_DATA") or os.environ.get("MTLSEARCH_SHARED_DATA")
    root = Path(env or REPO_ROOT.parent / "shared" / "data")
    path = root.joinpath(*parts)
    if not path.exists():
        reason = (
            f"shared data {path} not found; set MTLSEARCH_DATA to the folder holding "
            "census-income-kdd/, ali-ccp-sample/, aliexpress-sample/"
        )
        if os.environ.get("CI", "").strip().lower() == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


@pytest.fixture(name="shared_data_dir")
def _shared_data_dir_fixture() -> Path:
    """The shared data folder; see :func:`shared_data_dir`."""
    return shared_data_dir()
