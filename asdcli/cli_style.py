"""How every command line of the project looks: flags shown as flags, usage errors as one line with exit 2.
Shared by `asd` (cli.py) and `python -m asdcli.shapes`; imports only typer (no torch)."""

from __future__ import annotations

import sys

import typer
import typer.core

from asdcli.errors import safe_line

# click's usage-error base class (typer may vendor its own click, so found through typer's BadParameter)
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


class FlagsAsFlags:
    """Help shows a flag as `--resume`, not `--resume <bool>` (it takes no value): flags get an empty metavar."""

    def get_params(self, ctx):
        params = super().get_params(ctx)
        for param in params:
            if getattr(param, "is_flag", False) and param.metavar is None:
                param.metavar = ""
        return params


class OneLineUsageErrors(FlagsAsFlags, typer.core.TyperGroup):
    """Usage errors (unknown option, non-numeric count, missing argument) as ONE line on stderr, exit 2,
    instead of click's usage block and rich panel. Also the group of `python -m asdcli.shapes`."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except _CLICK_ERROR as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `asd` alone: the help was printed already
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            where = f"{ctx.command_path}: " if ctx is not None else ""
            hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
            typer.echo(f"error: {where}{one_line(exc.format_message())}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            typer.echo("aborted", err=True)
            sys.exit(1)
        sys.exit(rv if isinstance(rv, int) else 0)


def one_line(text: str) -> str:
    """One terminal-safe line: a key or value holding escape sequences is shown escaped, never executed."""
    return safe_line(text)
