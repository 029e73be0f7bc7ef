"""Entry point: composes the command groups and turns user errors into one line and exit 2.

Importing this module imports no torch: the command modules import what they use inside their
functions, so `litv2 --help`, `litv2 --version` and most bad input answer at once (the console
script also skips the model registration, see litv2_command.py).
"""

from __future__ import annotations

import signal
import sys
from typing import Annotated

import click
import typer

from litv2cli.errors import UserError

app = typer.Typer(
    name="litv2",
    help="Train, fine-tune, search and benchmark LITv2 vision transformers (HiLo attention).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        from litv2cli import __version__

        typer.echo(f"litv2 {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """Train, fine-tune, search and benchmark LITv2 vision transformers (HiLo attention)."""


def _register_commands() -> None:
    # Each command group lives in its own module with its own typer.Typer(); composing them
    # here keeps this file free of logic.
    from litv2cli.cli import info, train

    app.add_typer(info.app)
    app.add_typer(train.app)
    from litv2cli.cli import search

    app.add_typer(search.app)
    from litv2cli.cli import export

    app.add_typer(export.app)
    from litv2cli.cli import bench

    app.add_typer(bench.app)


_register_commands()


INTERRUPTED = 130  # exit status of a command stopped by Ctrl-C (128 + SIGINT)


class _CtrlC:
    """Ctrl-C raises KeyboardInterrupt as usual and is also remembered: a library that catches
    everything around an optional import (torch's and timm's imports have such blocks) can
    swallow the exception, and the command would then run to its end as if never stopped."""

    seen = False

    @classmethod
    def install(cls) -> None:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:  # not when ignored
            signal.signal(signal.SIGINT, cls.handle)

    @classmethod
    def handle(cls, signum: int, frame: object) -> None:
        cls.seen = True
        raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code; user mistakes print `litv2: error: ...` and give 2."""
    _CtrlC.install()
    try:
        command = typer.main.get_command(app)
        result = command.main(args=argv, prog_name="litv2", standalone_mode=False)
    except click.exceptions.NoArgsIsHelpError as exc:
        click.echo(exc.ctx.get_help() if exc.ctx else str(exc))
        return 0
    except click.exceptions.UsageError as exc:
        click.echo(f"litv2: error: {exc.format_message()}", err=True)
        return 2
    except UserError as exc:
        click.echo(f"litv2: error: {exc}", err=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        return _interrupted()
    except Exception:
        if _CtrlC.seen:  # what an interrupted import left half-done failed next: the cause was Ctrl-C
            return _interrupted()
        raise
    if result == INTERRUPTED or _CtrlC.seen:  # recent typer returns this code on Ctrl-C, silently
        return _interrupted()
    return result if isinstance(result, int) else 0


def _interrupted() -> int:
    click.echo("litv2: interrupted", err=True)
    return INTERRUPTED


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
