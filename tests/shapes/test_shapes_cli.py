"""`python -m asdcli.shapes`: a Typer app with argparse's command line (`--cfg 1 3 7.5`) and asd's error rule."""

from __future__ import annotations

import subprocess
import sys

import pytest
import typer

from asdcli.shapes.__main__ import PROG, app, main, spread_cfg

COMMANDS = ("train-prior", "export-prior", "eval-prior", "train-prior-mv", "export-prior-mv", "eval-prior-mv",
            "train-clip", "export-clip", "eval-clip")


def _params(argv: list[str]) -> dict:
    """The options one subcommand parses from argv (after spread_cfg), without running it."""
    group = typer.main.get_command(app)
    parent = group.make_context(PROG, [argv[0]], resilient_parsing=True)
    return group.commands[argv[0]].make_context(argv[0], spread_cfg(argv[1:]), parent=parent).params


def test_every_command_and_option_name_is_kept():
    group = typer.main.get_command(app)
    assert set(group.commands) == set(COMMANDS)
    opts = {name: {o for p in cmd.params for o in p.opts} for name, cmd in group.commands.items()}
    assert all("--debug" in names for names in opts.values())  # added to every command; the rest kept as it was
    opts = {name: names - {"--debug"} for name, names in opts.items()}
    train = {"--out", "--steps", "--resume", "--threads", "--batch", "--seed", "--config", "--device"}
    assert opts["train-prior"] == train | {"--init-from"} and opts["train-clip"] == opts["train-prior-mv"] == train
    assert opts["export-prior"] == opts["export-prior-mv"] == {"--from", "--to", "--fp32"}
    assert opts["export-clip"] == {"--from", "--to"}
    evals = {"--model", "--prompts", "--cfg", "--split", "--steps", "--grid", "--threads", "--clip"}
    assert opts["eval-prior"] == opts["eval-prior-mv"] == evals
    assert opts["eval-clip"] == {"--model", "--views", "--split", "--threads"}


def test_cfg_takes_several_values_as_argparse_did():
    got = _params(["eval-prior", "--model", "m", "--cfg", "1", "3", "7.5", "--steps", "2"])
    assert got["cfg"] == [1.0, 3.0, 7.5] and got["steps"] == 2 and got["split"].value == "test"
    assert _params(["eval-prior-mv", "--model", "m"])["cfg"] == [1.0, 3.0, 7.5]
    assert _params(["eval-prior-mv", "--model", "m", "--prompts", "4"])["prompts"] == 4
    assert _params(["eval-prior", "--cfg", "-1", "2", "--model", "m"])["cfg"] == [-1.0, 2.0]
    assert spread_cfg(["--cfg", "--steps", "3"]) == ["--cfg", "--steps", "3"]  # click then asks for a value
    assert spread_cfg(["--cfg=4", "--", "--cfg", "5"]) == ["--cfg=4", "--", "--cfg", "5"]


@pytest.mark.parametrize("argv, says", [
    (["train-prior", "--out", "x", "--bogus"], "No such option: --bogus"),
    (["eval-clip", "--model", "m", "--split", "dev"], "'dev' is not one of 'train', 'val', 'test'"),
    (["export-clip", "--from", "x"], "Missing option '--to'"),
    (["eval-prior", "--model", "m", "--cfg"], "'--cfg' requires an argument"),
    (["train-clip", "--out", "x", "--config", "[1]"], "--config: expected a JSON object of config keys"),
])
def test_bad_input_is_one_line_and_exit_2(argv, says, capsys, tmp_path):
    argv = [a.replace("x", str(tmp_path / "x")) if a == "x" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: ") and says in err
    assert not (tmp_path / "x").exists()


def test_help_imports_no_torch():
    code = ("import sys; from asdcli.shapes.__main__ import main; rc = main(['--help']); "
            "rc2 = main(['eval-prior', '--help']); print(rc, rc2, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().endswith("0 0 False") and "train-prior-mv" in out and "--cfg" in out


def test_the_documented_commands_parse():
    """Every `python -m asdcli.shapes ...` command of docs/shapesworld.md (indented continuation lines joined,
    comments cut)."""
    import shlex
    from pathlib import Path

    text = (Path(__file__).resolve().parents[2] / "docs" / "shapesworld.md").read_text(encoding="utf-8")
    text = text.replace("\\\n", " ").replace("\n    ", " ")
    lines = [shlex.split(line, comments=True) for line in text.splitlines()
             if line.startswith("python -m asdcli.shapes ")]
    assert len(lines) >= 8
    for argv in lines:
        _params(argv[3:])
    got = _params(["eval-prior", "--model", "bundled:shapes-prior", "--prompts", "121", "--cfg", "7.5", "--clip",
                   "none"])  # as docs/notebook.md §9 runs it
    assert got["cfg"] == [7.5] and got["prompts"] == 121 and got["clip"] == "none"
