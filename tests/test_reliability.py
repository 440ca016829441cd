"""The command contract under bad input and faults (DESIGN §1): exit 2 and ONE line on stderr for bad input (no
traceback), exit 1 and one line for faults such as a full disk, and nothing written or changed on failure.

One table runs every malformed input through the real CLI (CliRunner on asdcli.cli.app; a few also through a
real `python -m asdcli` subprocess) and checks the exit code, the one-line message and that the working folder
and the trained run are byte-identical afterwards.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from asdcli.cli import app

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
SMALL = ["render.resolution=8", "render.samples_per_ray=8", "prompts.num_val=1", "train.val_views=1"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="asd")


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file (bytes) and symlink (target) under root: equal snapshots = nothing written or changed."""
    out: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "-> " + os.readlink(path)
        elif path.is_file():
            with open(path, "rb") as fh:  # not Path.read_bytes: some cases make that fail on purpose
                out[rel] = fh.read()
        else:
            out[rel] = "<dir>"
    return out


def assert_one_line(res, code: int, expect: str) -> str:
    """Exit `code`, exactly one non-empty line on stderr containing `expect`, no traceback anywhere."""
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == code, f"exit {res.exit_code}, stderr: {res.stderr!r}, exception: {res.exception!r}"
    assert len(lines) == 1, f"expected one line on stderr, got {lines!r}"
    assert "Traceback" not in res.stdout + res.stderr
    assert expect.lower() in lines[0].lower(), f"{expect!r} not in {lines[0]!r}"
    assert lines[0].isprintable(), f"raw control characters reach the terminal: {lines[0]!r}"
    assert len(lines[0]) <= 2000
    return lines[0]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """One tiny trained run (1 step) for the generate / export / eval / resume cases."""
    run = tmp_path_factory.mktemp("reliability") / "run"
    res = runner.invoke(app, ["train", str(TINY), "--steps", "1", "--out", str(run), "--quiet", *SMALL])
    assert res.exit_code == 0, res.output
    return run


# ------------------------------------------------------------------------------------------- the table
class Env:
    """What a case builds its arguments from: a scratch folder (also the cwd) and the trained run."""

    def __init__(self, tmp: Path, run: Path, monkeypatch):
        self.tmp, self.run, self.monkeypatch = tmp, run, monkeypatch

    def write(self, name: str, data: str | bytes) -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data, encoding="utf-8")
        return path

    def recipe(self, mutate) -> Path:
        raw = yaml.safe_load(TINY.read_text())
        mutate(raw)
        return self.write("recipe.yaml", yaml.safe_dump(raw))

    def run_copy(self, edit_recipe=None) -> Path:
        copy = self.tmp / "run_copy"
        shutil.copytree(self.run, copy, symlinks=True)
        if edit_recipe is not None:
            path = copy / "recipe.yaml"
            path.write_text(edit_recipe(path.read_text()))
        return copy

    def weights(self) -> Path:
        return self.tmp / "run_copy" / "checkpoints" / "last" / "generator.safetensors"

    def prompts(self, name: str, data: str | bytes) -> Path:
        return self.write(name, data)

    def generate(self, *extra, prompt="a red cube", out="a.glb", ckpt=None):
        return ["generate", prompt, "--out", self.tmp / out, "--checkpoint", ckpt or self.run, "--resolution", "16",
                *extra]

    def train(self, recipe, *extra):
        return ["train", recipe, "--out", self.tmp / "out", "--quiet", *extra]


def _nan_weights(env: Env) -> Path:
    from safetensors.torch import load_file, save_file

    copy = env.run_copy()
    sd = load_file(str(env.weights()))
    key = next(iter(sd))
    sd[key] = sd[key] * float("nan")
    save_file(sd, str(env.weights()))
    return copy


def _truncated(env: Env) -> Path:
    copy = env.run_copy()
    data = env.weights().read_bytes()
    env.weights().write_bytes(data[: len(data) // 3])
    return copy


def _unreadable(monkeypatch, name: str):
    """Running as root, chmod cannot make a file unreadable: make opening it (in asdcli.safeio, where every
    input file is read) fail as EACCES would."""
    import builtins

    from asdcli import safeio

    def fake_open(path, *args, **kwargs):
        if Path(path).name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return builtins.open(path, *args, **kwargs)

    monkeypatch.setattr(safeio, "open", fake_open, raising=False)


def _unwritable_folder(monkeypatch):
    import tempfile

    def mkstemp(*args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def _sd_folder(env: Env, with_subfolders: bool) -> Path:
    folder = env.tmp / "sd_model"
    folder.mkdir()
    if with_subfolders:  # every file the weight preflight looks for is there, but unreadable
        for sub in ("unet", "text_encoder", "tokenizer", "scheduler"):
            (folder / sub).mkdir()
            (folder / sub / "config.json").write_text("{not json")
        for name in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors",
                     "tokenizer/vocab.json", "scheduler/scheduler_config.json"):
            (folder / name).write_text("{not json")
    return folder


def _lib(env: Env, name: str, data: str | bytes) -> str:
    return f"prompts.library={env.prompts(name, data)}"


def _prior(model) -> str:
    return f"prior={{kind: stable-diffusion, model: '{model}'}}"


LONG_YAML = "a: " + "[" * 3000 + "]" * 3000 + "\n"
DEEP_JSON = "[" * 50000 + "]" * 50000

# (id, args(env), expected substring of the one line); every case must exit 2 and write nothing.
CASES = [
    # --- recipes
    ("recipe-is-directory", lambda e: e.train(e.tmp), "is a directory"),
    ("recipe-missing", lambda e: e.train(e.tmp / "nope.yaml"), "recipe file not found"),
    ("recipe-empty", lambda e: e.train(e.write("r.yaml", "")), "the recipe is empty"),
    ("recipe-only-comments", lambda e: e.train(e.write("r.yaml", "# nothing\n")), "the recipe is empty"),
    ("recipe-list", lambda e: e.train(e.write("r.yaml", "- a\n- b\n")), "a recipe is a YAML mapping"),
    ("recipe-scalar", lambda e: e.train(e.write("r.yaml", "42\n")), "a recipe is a YAML mapping"),
    ("recipe-malformed", lambda e: e.train(e.write("r.yaml", "name: [tiny\n")), "malformed YAML"),
    ("recipe-tab-indent", lambda e: e.train(e.write("r.yaml", "train:\n\tsteps: 1\n")), "malformed YAML"),
    ("recipe-python-tag", lambda e: e.train(e.write("r.yaml", "!!python/object/apply:os.system ['true']\n")),
     "malformed YAML"),
    ("recipe-not-utf8", lambda e: e.train(e.write("r.yaml", b"name: caf\xe9\n")), "not UTF-8"),
    ("recipe-nested-too-deep", lambda e: e.train(e.write("r.yaml", LONG_YAML)), "nested too deeply"),
    ("recipe-unreadable", lambda e: (_unreadable(e.monkeypatch, "r.yaml"),
                                     e.train(e.write("r.yaml", "name: x\n")))[1], "cannot read"),
    ("recipe-unknown-top-key", lambda e: e.train(e.recipe(lambda r: r.update(bogus=1))), "bogus: unknown key"),
    ("recipe-unknown-nested-key", lambda e: e.train(e.recipe(lambda r: r["render"].update(resolutoin=8))),
     "did you mean 'resolution'"),
    ("recipe-wrong-type-float", lambda e: e.train(e.recipe(lambda r: r["train"].update(lr="fast"))),
     "train.lr: expected a number"),
    ("recipe-wrong-type-list", lambda e: e.train(e.recipe(lambda r: r["prompts"].update(items="a cube"))),
     "prompts.items: expected a list"),
    ("recipe-section-not-mapping", lambda e: e.train(e.recipe(lambda r: r.update(train=[1, 2]))),
     "train: expected a mapping"),
    ("recipe-unknown-kind", lambda e: e.train(e.recipe(lambda r: r["generator"].update(kind="mesh"))),
     "unknown generator kind"),
    ("recipe-base-loop", lambda e: e.train(e.write("r.yaml", "base: r.yaml\n")), "loops back"),
    ("recipe-base-missing", lambda e: e.train(e.write("r.yaml", "base: gone.yaml\nname: x\n")),
     "recipe file not found"),
    ("recipe-schema-version", lambda e: e.train(e.recipe(lambda r: r.update(schema_version=99))),
     "schema_version"),
    ("recipe-bad-name", lambda e: e.train(e.recipe(lambda r: r.update(name="../escape"))), "name:"),
    # --- overrides and flags
    ("override-without-equals", lambda e: e.train(TINY, "render.resolution:32"), "expected key.path=value"),
    ("override-empty-key", lambda e: e.train(TINY, "=5"), "empty key"),
    ("override-into-scalar", lambda e: e.train(TINY, "seed.x=1"), "seed is not a section"),
    ("override-negative-count", lambda e: e.train(TINY, "train.steps=-3"), "train.steps: must be >= 1"),
    ("override-non-numeric-count", lambda e: e.train(TINY, "render.views_per_prompt=many"), "expected an integer"),
    ("override-fractional-count", lambda e: e.train(TINY, "train.grad_accum=1.5"), "expected an integer"),
    ("override-zero-views", lambda e: e.train(TINY, "render.views_per_prompt=0"), "must be >= 1"),
    ("override-zero-resolution", lambda e: e.train(TINY, "render.resolution=0"), "render.resolution"),
    ("override-huge-resolution", lambda e: e.train(TINY, "render.resolution=100000"), "render.resolution"),
    ("override-negative-scheduled-resolution", lambda e: e.train(TINY, "render.resolution={piecewise: {0: 16, 5: -4}}"),
     "render.resolution"),
    ("override-nan-lr", lambda e: e.train(TINY, "train.lr=.nan"), "finite"),
    ("override-inf-guidance", lambda e: e.train(TINY, "loss.guidance_scale=.inf"), "finite"),
    ("override-negative-generator-size", lambda e: e.train(TINY, "generator.plane_res=-1"),
     "generator.plane_res: must be between 1 and"),
    ("override-zero-generator-width", lambda e: e.train(TINY, "generator.plane_channels=0"), "must be between 1 and"),
    ("override-unbuildable-generator", lambda e: e.train(TINY, "generator.num_heads=3"), "not divisible"),
    ("override-bad-betas", lambda e: e.train(TINY, "train.betas=[2, 3]"), "train.betas"),
    ("override-negative-num-val", lambda e: e.train(TINY, "prompts.num_val=-1"), "prompts.num_val"),
    ("override-bad-fovy", lambda e: e.train(TINY, "render.camera.fovy=[0, 0]"), "render.camera.fovy"),
    ("flag-steps-non-numeric", lambda e: e.train(TINY, "--steps", "abc"), "Invalid value for '--steps'"),
    ("flag-steps-negative", lambda e: e.train(TINY, "--steps", "-5"), "--steps: must be >= 1"),
    ("flag-unknown-option", lambda e: e.train(TINY, "--bogus"), "No such option"),
    ("flag-missing-argument", lambda e: ["train"], "Missing argument"),
    ("unknown-command", lambda e: ["frobnicate"], "No such command"),
    # --- run directory (--out, --resume)
    ("out-is-existing-file", lambda e: ["train", TINY, "--out", e.write("taken", "keep"), "--quiet"],
     "exists and is not a directory"),
    ("out-is-existing-run", lambda e: ["train", TINY, "--out", e.run, "--quiet"], "not empty"),
    ("resume-nothing-there", lambda e: e.train(TINY, "--resume"), "holds no run"),
    ("resume-other-recipe", lambda e: ["train", TINY, *SMALL, "generator.plane_res=8", "--resume", "--steps", "2",
                                       "--out", e.run_copy(), "--quiet"], "recipe differs"),
    # --- prompt libraries (train)
    ("library-missing", lambda e: e.train(TINY, f"prompts.library={e.tmp / 'p.json'}"), "prompt file not found"),
    ("library-is-directory", lambda e: e.train(TINY, f"prompts.library={e.tmp}"), "is a directory"),
    ("library-empty", lambda e: e.train(TINY, _lib(e, "p.txt", "")), "holds no prompts"),
    ("library-only-blank-lines", lambda e: e.train(TINY, _lib(e, "p.txt", "\n\n\n")),
     "holds no prompts"),
    ("library-malformed-json", lambda e: e.train(TINY, _lib(e, "p.json", '{"train": [')),
     "malformed JSON"),
    ("library-json-nested-too-deep", lambda e: e.train(TINY, _lib(e, "p.json", DEEP_JSON)),
     "nested too deeply"),
    ("library-not-utf8", lambda e: e.train(TINY, _lib(e, "p.txt", b"a red \xff cube")),
     "not UTF-8"),
    ("library-unreadable", lambda e: (_unreadable(e.monkeypatch, "p.txt"),
                                      e.train(TINY, _lib(e, "p.txt", "a cube")))[1],
     "cannot read"),
    ("library-empty-prompt", lambda e: e.train(TINY, _lib(e, "p.json", json.dumps({"train": ["a red cube", " "]}))),
     "empty prompt"),
    ("library-non-string-prompt", lambda e: e.train(TINY, _lib(e, "p.json", json.dumps({"train": ["a cube", 7]}))),
     "must be a string"),
    ("library-lone-surrogate", lambda e: e.train(TINY, _lib(e, "p.json", '{"train": ["a \\ud800 cube"]}')),
     "invalid character"),
    ("library-unknown-split", lambda e: e.train(TINY, _lib(e, "p.json", json.dumps({"training": ["a"]}))),
     "unknown split"),
    ("library-wrong-shape", lambda e: e.train(TINY, _lib(e, "p.json", "42")),
     "expected {"),
    ("library-inline-empty-prompt", lambda e: e.train(TINY, "prompts.items=['a cube', '']"), "empty prompt"),
    # --- priors (model folders)
    ("prior-folder-missing", lambda e: e.train(TINY, _prior(e.tmp / "no_such_model")), "not found"),
    ("prior-folder-is-file", lambda e: e.train(TINY, _prior(e.write("model.bin", b"\0"))), "is a file"),
    ("prior-folder-incomplete", lambda e: e.train(TINY, _prior(_sd_folder(e, False))), "subfolder"),
    ("prior-folder-unreadable", lambda e: e.train(TINY, _prior(_sd_folder(e, True))), "cannot load"),
    # --- distill
    ("distill-empty-prompt", lambda e: ["distill", "   ", "--out", e.tmp / "d"], "empty prompt"),
    ("distill-recipe-missing", lambda e: ["distill", "a cube", "--recipe", e.tmp / "r.yaml", "--out", e.tmp / "d"],
     "recipe file not found"),
    ("distill-steps-zero", lambda e: ["distill", "a cube", "--steps", "0", "--out", e.tmp / "d"], "--steps"),
    # --- generate
    ("generate-empty-prompt", lambda e: e.generate(prompt=""), "empty prompt"),
    ("generate-blank-prompt", lambda e: e.generate(prompt=" \t "), "empty prompt"),
    ("generate-unsupported-extension", lambda e: e.generate(out="a.fbx"), "unsupported extension"),
    ("generate-no-extension", lambda e: e.generate(out="mesh"), "unsupported extension"),
    ("generate-out-is-directory", lambda e: (e.write("d.glb/keep", "x"), e.generate(out="d.glb"))[1],
     "is a directory"),
    ("generate-out-parent-is-file", lambda e: (e.write("f", "x"), e.generate(out="f/a.glb"))[1], "is a file"),
    ("generate-out-unwritable", lambda e: (_unwritable_folder(e.monkeypatch), e.generate(out="a.glb"))[1],
     "cannot write"),
    ("generate-zero-resolution", lambda e: e.generate("--resolution", "0"), "--resolution"),
    ("generate-huge-resolution", lambda e: e.generate("--resolution", "100000"), "--resolution"),
    ("generate-zero-views", lambda e: e.generate("--views", "0", "--views-png", e.tmp / "v.png"), "--views"),
    ("generate-huge-views", lambda e: e.generate("--views", "100000", "--views-png", e.tmp / "v.png"), "--views"),
    ("generate-nan-threshold", lambda e: e.generate("--threshold", "nan"), "--threshold"),
    ("generate-few-faces", lambda e: e.generate("--max-faces", "2"), "--max-faces"),
    ("generate-turntable-extension", lambda e: e.generate("--turntable", e.tmp / "t.avi"), "unsupported extension"),
    ("generate-bad-device", lambda e: e.generate("--device", "tpu"), "--device"),
    ("generate-checkpoint-missing", lambda e: e.generate(ckpt=e.tmp / "none"), "not found"),
    ("generate-checkpoint-empty-dir", lambda e: (e.write("empty/.keep", ""), e.generate(ckpt=e.tmp / "empty"))[1],
     "no complete checkpoint"),
    ("generate-checkpoint-other-config", lambda e: e.generate(ckpt=e.run_copy(
        lambda t: t.replace("plane_res: 16", "plane_res: 8"))), "written with another config"),
    ("generate-checkpoint-other-depth", lambda e: e.generate(ckpt=e.run_copy(
        lambda t: t.replace("num_layers: 1", "num_layers: 2"))), "written with another config"),
    ("generate-checkpoint-truncated", lambda e: e.generate(ckpt=_truncated(e)), "damaged checkpoint file"),
    ("generate-checkpoint-nan", lambda e: e.generate(ckpt=_nan_weights(e)), "NaN"),
    ("generate-run-recipe-malformed", lambda e: e.generate(ckpt=e.run_copy(lambda t: "name: [\n")),
     "malformed YAML"),
    ("generate-run-recipe-not-utf8", lambda e: (e.run_copy(), (e.tmp / "run_copy" / "recipe.yaml").write_bytes(
        b"name: \xff\n"), e.generate(ckpt=e.tmp / "run_copy"))[2], "not UTF-8"),
    ("generate-run-recipe-missing", lambda e: (e.run_copy(), (e.tmp / "run_copy" / "recipe.yaml").unlink(),
                                               e.generate(ckpt=e.tmp / "run_copy"))[2], "no recipe.yaml"),
    # --- export
    ("export-out-is-file", lambda e: ["export", e.run, "--prompts", e.prompts("p.txt", "a red cube\n"), "--out",
                                      e.write("taken", "keep"), "--resolution", "8", "--quiet"], "not a directory"),
    ("export-prompts-empty", lambda e: ["export", e.run, "--prompts", e.prompts("p.txt", "# none\n"), "--out",
                                        e.tmp / "o"], "holds no prompts"),
    ("export-prompts-malformed-json", lambda e: ["export", e.run, "--prompts", e.prompts("p.json", "[\"a\""),
                                                 "--out", e.tmp / "o"], "malformed JSON"),
    ("export-prompts-not-utf8", lambda e: ["export", e.run, "--prompts", e.prompts("p.txt", b"\xc3\x28\n"),
                                           "--out", e.tmp / "o"], "not UTF-8"),
    ("export-split-missing", lambda e: ["export", e.run, "--prompts", e.prompts(
        "p.json", json.dumps({"train": ["a"]})), "--out", e.tmp / "o"], "split 'test' is empty"),
    ("export-checkpoint-other-config", lambda e: ["export", e.run_copy(
        lambda t: t.replace("plane_res: 16", "plane_res: 8")), "--out", e.tmp / "o"], "written with another config"),
    # --- eval
    ("eval-zero-views", lambda e: ["eval", "--checkpoint", e.run, "--views", "0"], "--views"),
    ("eval-huge-resolution", lambda e: ["eval", "--checkpoint", e.run, "--resolution", "99999"], "--resolution"),
    ("eval-json-extension", lambda e: ["eval", "--checkpoint", e.run, "--json", e.tmp / "r.txt"],
     "unsupported extension"),
    ("eval-clip-folder-missing", lambda e: ["eval", "--checkpoint", e.run, "--clip-score", "--clip-model",
                                            e.tmp / "clip", "--views", "1", "--resolution", "16"], "does not exist"),
    ("eval-checkpoint-other-config", lambda e: ["eval", "--checkpoint", e.run_copy(
        lambda t: t.replace("plane_res: 16", "plane_res: 8")), "--views", "1"], "written with another config"),
]


# -------------------------------------------------------------------------- round 2: hostile inputs (issue 34)
ALIAS_BOMB = "[" + ", ".join(
    [f"&a0 [{', '.join(['x'] * 9)}]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]) + "]"
ESCAPE_KEY = "\x1b[2K\r\x1b[32mdone: 50 steps\x1b[0m"  # would erase the error line and print a fake success


def _key_with_escapes(env: Env) -> Path:
    return env.write("r.yaml", f"base: {TINY}\n{json.dumps(ESCAPE_KEY)}: 1\n")


def _symlink_loop(env: Env) -> Path:
    a, b = env.tmp / "loop_a.yaml", env.tmp / "loop_b.yaml"
    a.symlink_to(b)
    b.symlink_to(a)
    return a


def _with_state(env: Env, text: str) -> Path:
    copy = env.run_copy()
    (copy / "checkpoints" / "last" / "state.json").write_text(text)
    return copy


def _edit_tensors(env: Env, name: str, edit) -> Path:
    from safetensors.torch import load_file, save_file

    copy = env.run_copy()
    path = copy / "checkpoints" / "last" / f"{name}.safetensors"
    sd = load_file(str(path))
    edit(sd)
    save_file(sd, str(path))
    return copy


def _reshape_first_moment(sd: dict) -> None:
    import torch

    key = next(k for k, v in sd.items() if v.dim() > 0)
    sd[key] = torch.zeros(sd[key].numel() + 1)


def _rng_as_float(sd: dict) -> None:
    sd["gen.rank0"] = sd["gen.rank0"].float()


def _resume(env: Env, run: Path) -> list:
    return ["train", TINY, *SMALL, "--resume", "--steps", "2", "--out", run, "--quiet"]


class _Payload:
    """A pickle that would create `marker` when loaded: what a hostile .bin/.pt does with a shell."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_only(folder: Path, marker: Path) -> None:
    """Every *.safetensors under `folder` becomes the pickled .bin transformers/diffusers fall back to."""
    import torch
    from safetensors.torch import load_file

    for f in list(folder.rglob("*.safetensors")):
        sd = load_file(str(f))
        sd["payload"] = _Payload(marker)
        torch.save(sd, f.with_name("diffusion_pytorch_model.bin" if f.name.startswith("diffusion")
                                   else "pytorch_model.bin"))
        f.unlink()


def _pickle_clip(env: Env) -> Path:
    from asdcli.bundled import bundled_clip

    folder = env.tmp / "clip"
    shutil.copytree(bundled_clip(), folder)
    _pickle_only(folder, env.tmp / "pwned")
    return folder


def _pickle_sd(env: Env) -> Path:
    from asdcli.priors.tiny import save_tiny_sd_folder

    folder = save_tiny_sd_folder(env.tmp / "sd", seed=0)
    _pickle_only(folder, env.tmp / "pwned")
    return folder


def _library_outside(env: Env) -> Path:
    def edit(text: str) -> str:
        raw = yaml.safe_load(text)
        raw["prompts"] = {"library": "/etc/passwd"}
        return yaml.safe_dump(raw)

    return env.run_copy(edit)


def _no_generator(env: Env) -> Path:
    copy = env.run_copy()
    env.weights().unlink()
    return copy


def _world_size_2(env: Env) -> None:
    env.monkeypatch.setenv("WORLD_SIZE", "2")
    for key in ("RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.monkeypatch.delenv(key, raising=False)


R2 = [
    # data loss / wrong output
    ("recipe-duplicate-section", lambda e: e.train(e.write("r.yaml", f"base: {TINY}\ntrain: {{steps: 3}}\n"
                                                                      f"train: {{lr: 0.1}}\n")), "appears twice"),
    # denial of service: bounded before use, even with --dry-run
    ("recipe-alias-bomb", lambda e: e.train(e.write("r.yaml", f"base: {TINY}\nseed: {ALIAS_BOMB}\n"), "--dry-run"),
     "too large after expanding aliases"),
    ("override-alias-bomb", lambda e: e.train(TINY, f"seed={ALIAS_BOMB}", "--dry-run"),
     "too large after expanding aliases"),
    ("recipe-dev-zero", lambda e: e.train("/dev/zero", "--dry-run"), "larger than 1 MiB"),
    ("library-dev-zero", lambda e: e.train(TINY, "prompts.library=/dev/zero", "--dry-run"), "larger than 64 MiB"),
    ("export-prompts-dev-zero", lambda e: ["export", e.run, "--prompts", "/dev/zero", "--out", e.tmp / "o"],
     "larger than 64 MiB"),
    ("dry-run-huge-plane-res", lambda e: e.train(TINY, "generator.plane_res=100000", "--dry-run"),
     "generator.plane_res: must be between 1 and 2,048"),
    ("dry-run-huge-samples", lambda e: e.train(TINY, "render.samples_per_ray=100000000", "--dry-run"),
     "render.samples_per_ray: at most 4,096"),
    ("dry-run-samples-1e8", lambda e: e.train(TINY, "render.samples_per_ray=1e8", "--dry-run"), "expected an integer"),
    ("dry-run-points-per-step", lambda e: e.train(TINY, "render.resolution=4096", "render.samples_per_ray=4096",
                                                  "--dry-run"), "points a step"),
    ("dry-run-huge-prompts-per-step", lambda e: e.train(TINY, "render.prompts_per_step=1000000", "--dry-run"),
     "render.prompts_per_step: at most"),
    # terminal injection: the key is shown escaped (assert_one_line checks the line is printable)
    ("recipe-key-with-escapes", lambda e: e.train(_key_with_escapes(e)), "unknown key"),
    ("override-key-with-escapes", lambda e: e.train(TINY, f"{ESCAPE_KEY}=1"), "unknown key"),
    ("library-prompt-sets-window-title", lambda e: ["eval", "--checkpoint", e.run, "--prompts", e.prompts(
        "p.txt", "a red cube\x1b]0;pwned\x07\n"), "--views", "1"], "control character"),
    ("generate-prompt-with-escape", lambda e: e.generate(prompt="a red cube\x1b[2J"), "control character"),
    ("override-value-with-escapes", lambda e: e.train(TINY, f"train.optimizer='{ESCAPE_KEY}'"), "not allowed"),
    # exit 1 before, the user's to fix: now exit 2
    ("recipe-nul-name", lambda e: e.train(e.write("r.yaml", f'base: {TINY}\nname: "a\\0b"\n')), "NUL byte"),
    ("recipe-nul-output-dir", lambda e: ["train", e.write("r.yaml", f'base: {TINY}\noutput: {{dir: "o\\0x"}}\n'),
                                         "--quiet"], "NUL byte"),
    ("recipe-nul-base", lambda e: e.train(e.write("r.yaml", 'base: "x\\0y"\n')), "NUL byte"),
    ("recipe-symlink-loop", lambda e: e.train(_symlink_loop(e)), "symlink loop"),
    ("override-seed-huge", lambda e: e.train(TINY, "seed=100000000000000000000"), "seed: must be between 0"),
    ("override-seed-1e20", lambda e: e.train(TINY, "seed=1e20"), "seed: expected an integer"),
    ("override-seed-negative", lambda e: e.train(TINY, "seed=-1"), "seed: must be between 0"),
    ("override-eps-zero", lambda e: e.train(TINY, "train.eps=0"), "train.eps: must be > 0"),
    ("text-cache-unwritable", lambda e: e.train(TINY, *SMALL, f"train.text_cache={e.write('f', 'x')}/cache"),
     "train.text_cache"),
    ("world-size-without-torchrun", lambda e: (_world_size_2(e), e.train(TINY, *SMALL))[1], "torchrun"),
    ("resume-state-empty-object", lambda e: _resume(e, _with_state(e, "{}")), 'no "step"'),
    ("resume-state-step-string", lambda e: _resume(e, _with_state(e, '{"step": "12"}')),
     "must be a non-negative integer"),
    ("resume-state-not-json", lambda e: _resume(e, _with_state(e, "\0\0")), "state.json: unreadable"),
    ("resume-optimizer-other-shape", lambda e: _resume(e, _edit_tensors(e, "optimizer", _reshape_first_moment)),
     "does not fit this recipe"),
    ("resume-rng-wrong-dtype", lambda e: _resume(e, _edit_tensors(e, "rng", _rng_as_float)), "expected uint8"),
    ("eval-clip-pickle-only", lambda e: ["eval", "--checkpoint", e.run, "--clip-score", "--clip-model",
                                         _pickle_clip(e), "--views", "1", "--resolution", "16"], "pickle"),
    ("prior-sd-pickle-only", lambda e: e.train(TINY, _prior(_pickle_sd(e))), "pickle"),
    # wrong or noisy messages
    ("generate-generator-deleted", lambda e: e.generate(ckpt=_no_generator(e)), "generator.safetensors is missing"),
    # leaks and odd input
    ("export-library-outside-run", lambda e: ["export", _library_outside(e), "--out", e.tmp / "o"],
     "outside the run folder"),
    ("generate-zero-width-prompt", lambda e: e.generate(prompt="\u200b\u2060\ufeff"), "invisible"),
    ("distill-zero-width-prompt", lambda e: ["distill", "\u200b \u200b", "--out", e.tmp / "d"], "invisible"),
    ("library-zero-width-prompt", lambda e: e.train(TINY, _lib(e, "p.txt", "a red cube\n\u200b\u200c\n")),
     "invisible"),
]
CASES += R2


def test_table_has_enough_cases():
    assert len(CASES) >= 30
    assert len({case[0] for case in CASES}) == len(CASES)


@pytest.mark.parametrize("make, expect", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(run_dir, tmp_path, monkeypatch, make, expect):
    monkeypatch.chdir(tmp_path)  # a default output folder (runs/NAME) would land here and be seen
    before_run = snapshot(run_dir)
    args = make(Env(tmp_path, run_dir, monkeypatch))
    before = snapshot(tmp_path)
    res = invoke(*args)
    assert_one_line(res, 2, expect)
    assert snapshot(tmp_path) == before, "a failed command wrote or changed files"
    assert snapshot(run_dir) == before_run
    assert not (tmp_path / "pwned").exists()  # a pickle payload never ran


SUBPROCESS_CASES = {  # the same contract through a real interpreter (the console script's code path)
    "recipe-missing": (["train", "missing.yaml"], "recipe file not found"),
    "override-without-equals": (["train", str(TINY), "render.resolution:32"], "expected key.path=value"),
    "steps-non-numeric": (["train", str(TINY), "--steps", "abc"], "Invalid value for '--steps'"),
    "distill-blank-prompt": (["distill", " "], "empty prompt"),
    "unknown-command": (["frobnicate"], "No such command"),
}


@pytest.mark.parametrize("args, expect", SUBPROCESS_CASES.values(), ids=SUBPROCESS_CASES.keys())
def test_bad_input_through_python_m_asdcli(tmp_path, args, expect):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "asdcli", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=120)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and expect in lines[0] and "Traceback" not in proc.stderr + proc.stdout
    assert list(tmp_path.iterdir()) == []


def test_debug_flag_keeps_the_traceback(tmp_path):
    res = invoke("generate", "", "--out", tmp_path / "a.glb", "--debug")
    assert res.exit_code != 0 and res.exception is not None and not isinstance(res.exception, SystemExit)


# ---------------------------------------------------------------------------------- warnings, not errors
def test_duplicate_and_over_long_prompts_warn_and_export(run_dir, tmp_path):
    long_prompt = "a red cube " * 40  # far over the tiny tokenizer's 16 tokens
    prompts = tmp_path / "p.txt"
    prompts.write_text(f"a red cube\na red cube\n{long_prompt}\n")
    out = tmp_path / "out"
    with pytest.warns(UserWarning) as record:
        res = invoke("export", run_dir, "--prompts", prompts, "--out", out, "--resolution", "8", "--quiet")
    assert res.exit_code == 0, res.output
    messages = " ".join(str(w.message) for w in record)
    assert "duplicate prompt" in messages and "truncated (end-of-text kept)" in messages
    assert len(json.loads((out / "index.json").read_text())) == 2


def test_over_long_prompt_keeps_end_of_text_token():
    from asdcli.priors.text import load_text_encoder
    from asdcli.recipe import load_recipe

    encoder = load_text_encoder(load_recipe(TINY).prior)
    with pytest.warns(UserWarning, match="truncated"):
        ids = encoder.tokenize(["a red cube " * 40, "a red cube"])
    eos = encoder.tokenizer.eos_token_id
    assert ids.shape[1] == encoder.max_length
    assert ids[0, -1].item() == eos  # cut to L tokens, the last one is end-of-text
    assert eos in ids[1].tolist()


# ------------------------------------------------------------------------------------------------ faults
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_during_checkpoint_keeps_the_previous_one(run_dir, tmp_path, monkeypatch):
    from asdcli.engine import checkpoint as ckpt_io

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)
    ckpts = snapshot(run / "checkpoints")
    monkeypatch.setattr(ckpt_io, "save_file", _enospc)
    res = invoke("train", TINY, *SMALL, "--steps", "2", "--resume", "--out", run, "--quiet")
    assert_one_line(res, 1, "no space left")
    assert snapshot(run / "checkpoints") == ckpts  # step 1 intact, `last` still points at it, no debris
    assert os.readlink(run / "checkpoints" / "last") == "step_000001"
    monkeypatch.undo()
    res = invoke("train", TINY, *SMALL, "--steps", "2", "--resume", "--out", run, "--quiet")
    assert res.exit_code == 0, res.output  # the kept checkpoint resumes
    assert ckpt_io.load_state(ckpt_io.resolve_checkpoint(run))["step"] == 2


def test_full_disk_writing_run_metadata_keeps_the_old_file(run_dir, tmp_path, monkeypatch):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)
    meta = (run / "meta.json").read_bytes()
    real = Path.write_bytes

    def write_bytes(self, data):  # asdcli.atomic writes meta.json's bytes to a temp file named .meta.*.tmp.json
        if self.name.startswith(".meta.") and ".tmp" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    res = invoke("train", TINY, *SMALL, "--steps", "2", "--resume", "--out", run, "--quiet")
    assert_one_line(res, 1, "no space left")
    assert (run / "meta.json").read_bytes() == meta
    assert not [p.name for p in run.iterdir() if ".tmp" in p.name]


def _enospc_on_temp_files(monkeypatch):
    """Every atomic write goes to a temp file first: make writing its data fail as a full disk does."""
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".") and ".tmp" in self.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)


def test_full_disk_during_export_keeps_earlier_files(run_dir, tmp_path, monkeypatch):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    out = tmp_path / "out"
    args = ["export", run_dir, "--prompts", prompts, "--out", out, "--resolution", "8", "--quiet"]
    assert invoke(*args).exit_code == 0
    before = snapshot(out)
    prompts.write_text("a red cube\na blue sphere\n")
    _enospc_on_temp_files(monkeypatch)
    res = invoke(*args, "--overwrite")
    assert_one_line(res, 1, "no space left")
    assert snapshot(out) == before  # the earlier asset and index.json byte-identical, no temp debris


def test_full_disk_during_generate_keeps_the_existing_file(run_dir, tmp_path, monkeypatch):
    target = tmp_path / "a.glb"
    target.write_bytes(b"an earlier mesh")
    _enospc_on_temp_files(monkeypatch)
    res = invoke("generate", "a red cube", "--out", target, "--checkpoint", run_dir, "--resolution", "16")
    assert_one_line(res, 1, "no space left")
    assert target.read_bytes() == b"an earlier mesh"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.glb"]


def _generator_weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run / "checkpoints" / "last" / "generator.safetensors"))


def test_killed_before_the_first_checkpoint_resumes_from_step_0(run_dir, tmp_path):
    """SIGKILL after the run directory appeared but before any checkpoint (or during its write): --resume
    starts over and ends where an uninterrupted run ends."""
    import torch

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(run_dir / "recipe.yaml", run / "recipe.yaml")
    (run / "metrics.jsonl").write_text("")
    debris = run / "checkpoints" / ".tmp_step_000001_99999"  # a checkpoint write cut off by the kill
    debris.mkdir(parents=True)
    (debris / "generator.safetensors").write_bytes(b"\0" * 10)
    res = invoke("train", TINY, *SMALL, "--steps", "1", "--resume", "--out", run, "--quiet")
    assert res.exit_code == 0, res.output
    assert not debris.exists()
    expected, got = _generator_weights(run_dir), _generator_weights(run)
    assert expected.keys() == got.keys() and all(torch.equal(expected[k], got[k]) for k in expected)


def test_killed_mid_checkpoint_write_resumes_from_the_previous_one(run_dir, tmp_path):
    from asdcli.engine import checkpoint as ckpt_io

    run = tmp_path / "run"
    shutil.copytree(run_dir, run, symlinks=True)
    debris = run / "checkpoints" / ".tmp_step_000002_99999"
    debris.mkdir()
    (debris / "generator.safetensors").write_bytes(b"partial")
    assert ckpt_io.resolve_checkpoint(run).name == "step_000001"
    res = invoke("train", TINY, *SMALL, "--steps", "2", "--resume", "--out", run, "--quiet")
    assert res.exit_code == 0, res.output
    assert ckpt_io.load_state(ckpt_io.resolve_checkpoint(run))["step"] == 2 and not debris.exists()


def test_failure_before_the_first_checkpoint_leaves_no_run_dir(tmp_path, monkeypatch):
    from asdcli.engine.steps import StepRunner

    def broken(self, *args, **kwargs):
        raise RuntimeError("simulated crash in the first step")

    monkeypatch.setattr(StepRunner, "__call__", broken)
    res = invoke("train", TINY, *SMALL, "--steps", "2", "--out", tmp_path / "run", "--quiet")
    assert_one_line(res, 1, "simulated crash")
    assert not (tmp_path / "run").exists()


def test_nan_steps_abort_with_one_line_and_no_half_run(tmp_path, monkeypatch):
    from asdcli.engine.steps import StepRunner

    real = StepRunner.__call__

    def poisoned(self, *args, **kwargs):
        micro = real(self, *args, **kwargs)
        micro.loss = micro.loss * float("nan")
        micro.logs["loss"] = float("nan")
        return micro

    monkeypatch.setattr(StepRunner, "__call__", poisoned)
    res = invoke("train", TINY, *SMALL, "train.max_nonfinite=2", "--steps", "5", "--out", tmp_path / "run",
                 "--quiet")
    assert_one_line(res, 1, "2 non-finite steps in a row")
    assert not (tmp_path / "run").exists()  # no finite checkpoint was ever written: nothing is left
