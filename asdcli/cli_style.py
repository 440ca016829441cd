"""How every command line of the project looks: flags shown as flags, usage errors as one line with exit 2, a
failing command body as one line with its exit code (`guarded`). Shared by `asd` (cli.py) and
`python -m asdcli.shapes`; imports only typer (no torch)."""

from __future__ import annotations

import errno
import sys

import typer
import typer.core

from asdcli.errors import UserError, safe_line

# click's usage-error base class (typer may vendor its own click, so found through typer's BadParameter)
_CLICK_ERROR = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")


DEBUG = typer.Option(False, "--debug", help="Show full tracebacks instead of one-line errors.")

PICKLE_REFUSED = ("a model file is a pickle (.bin/.pt/.ckpt) that holds more than tensors, so it was refused "
                  "unread (nothing in it ran); use the model's .safetensors weights, or convert the file on a "
                  "machine where you trust its source")


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


def guarded(debug: bool, body, user_errors: tuple[type[BaseException], ...] = ()):
    """body() under the contract: bad input (a UserError or one of `user_errors`) → one line, exit 2; Ctrl-C →
    "interrupted", exit 130; a full disk → one line naming the file, exit 1; anything else → one line naming
    the exception, exit 1. With `debug` the traceback instead (Ctrl-C still exits 130)."""
    try:
        return body()
    except (UserError, *user_errors) as exc:
        if debug:
            raise
        typer.echo(f"error: {one_line(exc)}", err=True)
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        raise typer.Exit(130) from None
    except Exception as exc:  # the contract: one line unless --debug
        if debug:
            raise
        if type(exc).__name__ == "UnpicklingError":  # torch.load(weights_only=True) refused a model file's pickle
            typer.echo(f"error: {one_line(PICKLE_REFUSED)}", err=True)
            raise typer.Exit(2) from None
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            where = f" writing {one_line(exc.filename)}" if exc.filename else ""
            typer.echo(f"error: no space left on the device{where}; free disk space and rerun (files written "
                       f"before are intact)", err=True)
            raise typer.Exit(1) from None
        name = type(exc).__name__
        typer.echo(f"internal error ({name}): {one_line(exc)}; rerun with --debug for the traceback", err=True)
        raise typer.Exit(1) from None
