"""`asd export`: one asset per prompt, safe names, skip-existing, and one failure does not stop the batch."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asdcli.cli import app

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
runner = CliRunner()


def test_one_bad_prompt_of_twenty(tiny_run, tmp_path, monkeypatch):
    import asdcli.generate as generate

    prompts = [f"a red cube number {i}" for i in range(19)] + ["../../escape attempt"]
    (tmp_path / "p.json").write_text(json.dumps({"test": prompts}))
    real = generate.generate_mesh

    def flaky(model, prompt, *args, **kwargs):
        if prompt == "a red cube number 7":
            raise ValueError("simulated isosurface failure")
        return real(model, prompt, *args, **kwargs)

    monkeypatch.setattr(generate, "generate_mesh", flaky)
    out = tmp_path / "out"
    res = runner.invoke(app, ["export", str(tiny_run), "--prompts", str(tmp_path / "p.json"), "--out", str(out),
                              "--resolution", "16", "--quiet"])
    assert res.exit_code == 1
    assert "failed: 'a red cube number 7': simulated isosurface failure" in res.stderr
    assets = sorted(p.name for p in out.iterdir() if p.suffix == ".glb")
    assert len(assets) == 19
    index = json.loads((out / "index.json").read_text())
    assert len(index) == 19 and "a red cube number 7" not in index.values()
    assert all("/" not in name and not name.startswith(".") for name in index)
    assert not any(p.name == "escape_attempt.glb" for p in tmp_path.iterdir())  # stayed inside --out


def test_skip_existing_unless_overwrite(tiny_run, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a blue sphere\n")
    out = tmp_path / "out"
    args = ["export", str(tiny_run), "--prompts", str(prompts), "--out", str(out), "--resolution", "16",
            "--format", "ply", "--quiet"]
    assert runner.invoke(app, args).exit_code == 0
    target = out / "a_blue_sphere.ply"
    target.write_bytes(b"keep me")
    res = runner.invoke(app, args)
    assert res.exit_code == 0 and "1 existing skipped" in res.stdout
    assert target.read_bytes() == b"keep me"
    assert runner.invoke(app, [*args, "--overwrite"]).exit_code == 0
    assert target.read_bytes() != b"keep me"


@pytest.mark.parametrize("args, message", [
    (["--format", "fbx"], "--format: expected glb, obj or ply"),
    (["--resolution", "0"], "--resolution: must be between 8 and 1024"),
    (["--split", "dev"], "--split: expected one of train, val, test"),
])
def test_bad_export_options(tiny_run, tmp_path, args, message):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cube\n")
    res = runner.invoke(app, ["export", str(tiny_run), "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                              *args])
    assert res.exit_code == 2 and message in res.stderr
    assert not (tmp_path / "o").exists()
