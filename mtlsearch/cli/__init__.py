"""The ``mtlsearch`` command: a thin face over the library layers.

Each command group lives in its own module with a ``register(app)`` function; nothing in
the library imports this package.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import sys
import threading

import typer

from mtlsearch import _interrupt
from mtlsearch._errors import EXIT_UNAVAILABLE, StorageUnavailable, UserError

app = typer.Typer(
    name="mtlsearch",
    help="Search the design space of multi-task networks (PLE, CGC, MMoE, OMoE, shared-bottom).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log debug messages."),
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _register_commands() -> None:
    from mtlsearch.cli import _arch, _data, _search, _tracking, _train

    for module in (_arch, _data, _search, _train, _tracking):
        module.register(app)


_register_commands()

#: Options that take several values: ``--objectives income:auc marital:auc params`` is read
#: as ``--objectives income:auc,marital:auc,params`` (click options take one value each).
MULTI_VALUE_OPTIONS = ("--objectives",)


def join_multi_values(argv: list[str]) -> list[str]:
    """The command line with each :data:`MULTI_VALUE_OPTIONS` option's following bare words
    (up to the next ``-``-token) joined to its value by commas. Only options of commands
    without positional arguments are listed, so no argument is swallowed."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        name, eq, first = token.partition("=")
        if token == "--":
            out.extend(argv[i:])
            break
        if name in MULTI_VALUE_OPTIONS and (eq or i + 1 < len(argv)):
            values = [first] if eq else [argv[i + 1]]
            i += 1 if eq else 2
            while i < len(argv) and not argv[i].startswith("-"):
                values.append(argv[i])
                i += 1
            out += [name, ",".join(values)]
            continue
        out.append(token)
        i += 1
    return out


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised in the main thread so that it unwinds exactly like Ctrl-C: the running
    trial is released for retry, observers close its MLflow run, the process exits 143."""


_signalled: list[int] = []


def _on_sigterm(signum: int, frame: object) -> None:
    _signalled.append(signum)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean-up
    exc = Terminated()
    _interrupt.record(exc)  # raised again at the next safe point if this raise is swallowed
    raise exc


def _on_sigint(signum: int, frame: object) -> None:
    exc = KeyboardInterrupt()
    _interrupt.record(exc)
    raise exc


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit 2;
    Ctrl-C exits 130 and SIGTERM 143 after releasing running trials; a study storage that
    stays unreachable exits 75 (EX_TEMPFAIL) with one line."""
    if threading.current_thread() is threading.main_thread():
        _interrupt.quiet_swallowed_interrupts()  # a swallowed interrupt is re-raised, not printed
        signal.signal(signal.SIGTERM, _on_sigterm)
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, _on_sigint)
    try:
        result = app(args=join_multi_values(sys.argv[1:]), standalone_mode=False)
    except UserError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except StorageUnavailable as exc:
        typer.secho(f"error: {exc}; giving up (the running trial is retried by other workers)",
                    err=True, fg=typer.colors.RED)  # fmt: skip
        _exit_interrupted(None, EXIT_UNAVAILABLE)
    except KeyboardInterrupt:
        _exit_interrupted("interrupted")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        if _signalled:
            _exit_interrupted("interrupted")
        sys.exit(1)
    except Exception as exc:  # usage errors: click's, or the copy typer >= 0.2x vendors
        show, code = getattr(exc, "show", None), getattr(exc, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            sys.exit(code)
        raise
    # Typer turns Ctrl-C into a return value of 130 when not in standalone mode.
    if isinstance(result, int) and result:
        if result == 130:
            _exit_interrupted("interrupted; run the same command again to resume")
        sys.exit(result)


def _exit_interrupted(message: str | None, code: int | None = None) -> None:
    """Exit 130 after Ctrl-C (143 after SIGTERM), even when a thread cannot be stopped.

    A worker thread may still be inside a training step; a plain exit would wait for it.
    Then the exit handlers are run by hand and the process ends without joining it.
    """
    if code is None:
        code = 128 + signal.SIGTERM if _signalled else 130
        if _signalled and message:
            message = message.replace("interrupted", "terminated (SIGTERM)", 1)
    if message:
        typer.secho(message, err=True, fg=typer.colors.YELLOW)
    stray = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if not stray:
        sys.exit(code)
    atexit._run_exitfuncs()  # MLflow ends its runs, logging flushes
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
