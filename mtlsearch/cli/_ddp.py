"""``--nproc N``: run ``mtlsearch train`` as N DDP processes through torchrun.

``mtlsearch train --nproc N ...`` starts ``python -m torch.distributed.run --standalone
--nproc-per-node N -m mtlsearch train ...`` (the same arguments without ``--nproc``) and
exits with its status; ``torchrun --nproc-per-node N -m mtlsearch train ...`` works the same
way directly. Each rank gets ``cores // N`` torch threads unless ``--threads`` says.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Sequence

import typer

from mtlsearch._errors import UserError
from mtlsearch.cli._common import available_cores

logger = logging.getLogger(__name__)

NPROC_HELP = (
    "Train with N processes (PyTorch DDP through torchrun; gloo on the CPU, NCCL on CUDA): each "
    "trains on 1/N of every batch. Loss-level weightings only; see README 'Several processes'."
)


def nproc_option() -> int | None:
    return typer.Option(None, "--nproc", min=1, metavar="N", help=NPROC_HELP, show_default=False)


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without ``--nproc N`` / ``--nproc=N``."""
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
            continue
        if token == "--nproc":
            skip = i + 1 < len(argv)
            continue
        if token.startswith("--nproc="):
            continue
        out.append(token)
    return out


def rank_threads(threads: int | None, nproc: int) -> int:
    """Torch threads per rank: ``--threads``, else the cores shared out (at least 1)."""
    return threads if threads is not None else max(1, available_cores() // max(1, nproc))


def launch(nproc: int, threads: int | None, argv: Sequence[str] | None = None) -> int:
    """Run this command line again under torchrun with ``nproc`` ranks; its exit status.

    The ranks get ``--threads`` (:func:`rank_threads`) and ``OMP_NUM_THREADS`` set alike.
    """
    args = without_nproc(list(sys.argv[1:] if argv is None else argv))
    n = rank_threads(threads, nproc)
    if threads is None:
        args += ["--threads", str(n)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += ["-m", "mtlsearch", *args]
    logger.info("starting %d processes (DDP), %d threads each", nproc, n)
    env = {**os.environ, "OMP_NUM_THREADS": str(n)}
    try:
        return subprocess.call(cmd, env=env)
    except OSError as exc:
        raise UserError(f"--nproc {nproc}: could not start torchrun: {exc}") from None
