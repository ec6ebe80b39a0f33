"""The ``mtlsearch`` command: a thin face over the library layers.

Each command group lives in its own module with a ``register(app)`` function; nothing in
the library imports this package.
"""

from __future__ import annotations

import logging
import sys

import typer

from mtlsearch._errors import UserError

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


def main() -> None:
    """Console-script entry point: user errors become one line on stderr and exit 2."""
    try:
        result = app(standalone_mode=False)
    except UserError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True, fg=typer.colors.YELLOW)
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
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
            typer.secho("interrupted; run the same command again to resume", err=True, fg=typer.colors.YELLOW)
        sys.exit(result)
