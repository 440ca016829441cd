"""Security: weights load through safetensors (a .pt/.ckpt only with torch.load(weights_only=True)); no pickle, no
eval/exec, YAML only through safe loading; prompts never become paths unsanitised; nothing reaches the network
unless the user names a hub model id, and HF_HUB_OFFLINE=1 is honoured."""

from __future__ import annotations

import ast
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from asdcli.cli import app

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "asdcli"
TINY = ROOT / "recipes" / "tiny_cpu.yaml"
SMALL = ["render.resolution=8", "render.samples_per_ray=8", "prompts.num_val=1", "train.val_views=1"]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], prog_name="asd")


def one_line(res, code: int) -> str:
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.exit_code == code, f"exit {res.exit_code}: {res.stderr!r} {res.exception!r}"
    assert len(lines) == 1 and "Traceback" not in res.stdout + res.stderr, lines
    return lines[0]


# ----------------------------------------------------------------------------------- the package source
def _sources() -> list[tuple[Path, str, ast.AST]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        out.append((path, text, ast.parse(text, filename=str(path))))
    assert len(out) > 20
    return out


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return "?"


def _keyword(call: ast.Call, name: str):
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    return None


UNSAFE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def test_source_has_no_pickle_eval_exec_or_unsafe_yaml():
    problems = []
    for path, _, tree in _sources():
        where = path.relative_to(ROOT)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                problems += [f"{where}:{node.lineno}: imports {n}" for n in names
                             if n.split(".")[0] in UNSAFE_MODULES]
            if not isinstance(node, ast.Call):
                continue
            name = _dotted(node.func)
            if name in ("eval", "exec", "compile", "__import__", "builtins.eval", "builtins.exec"):
                problems.append(f"{where}:{node.lineno}: {name}()")
            if name in ("os.system", "os.popen") or (_keyword(node, "shell") is not None and name.startswith(
                    "subprocess.")):
                problems.append(f"{where}:{node.lineno}: shell command {name}()")
            if name.endswith(("yaml.unsafe_load", "yaml.full_load", "yaml.load_all", "yaml.unsafe_load_all")):
                problems.append(f"{where}:{node.lineno}: {name}()")
            if name.endswith("yaml.load"):
                loader = _keyword(node, "Loader")
                if loader is None or _dotted(loader).split(".")[-1] not in ("SafeLoader", "CSafeLoader"):
                    problems.append(f"{where}:{node.lineno}: yaml.load without SafeLoader")
            if name.endswith("torch.load"):
                safe = _keyword(node, "weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    problems.append(f"{where}:{node.lineno}: torch.load without weights_only=True")
            if name.endswith(("torch.save", "pickle.dump", "pickle.dumps")):
                problems.append(f"{where}:{node.lineno}: {name}() (weights are written as safetensors)")
            if _keyword(node, "trust_remote_code") is not None:
                problems.append(f"{where}:{node.lineno}: trust_remote_code")
    assert not problems, "\n".join(problems)


def test_grep_agrees_with_the_ast_check():
    """The same rules as plain text, so a call the AST walk could miss (e.g. through an alias) still shows."""
    patterns = {
        "pickle.load": re.compile(r"\bpickle\.loads?\("),
        "eval(": re.compile(r"(?<![\w.])eval\("),
        "exec(": re.compile(r"(?<![\w.])exec\("),
        "yaml.load( without SafeLoader": re.compile(r"\byaml\.load\((?![^)]*SafeLoader)"),
    }
    problems = []
    for path, text, _ in _sources():
        for label, pattern in patterns.items():
            problems += [f"{path.relative_to(ROOT)}: {label}" for _ in pattern.finditer(text)]
        # every torch.load( call carries weights_only=True within its argument list
        for match in re.finditer(r"\btorch\.load\(", text):
            depth, end = 1, match.end()
            while depth and end < len(text):
                depth += {"(": 1, ")": -1}.get(text[end], 0)
                end += 1
            if "weights_only=True" not in text[match.end():end]:
                problems.append(f"{path.relative_to(ROOT)}: torch.load without weights_only=True")
    assert not problems, "\n".join(problems)


# -------------------------------------------------------------------------------------- weights and YAML
class _Payload:
    """Unpickling this would create the marker file (what a malicious checkpoint would do with a shell)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_malicious_pt_checkpoint_is_refused_without_running_code(tmp_path):
    import torch

    marker = tmp_path / "pwned"
    evil = tmp_path / "sd-v2.1-base-4view.pt"
    torch.save({"state_dict": {"model.diffusion_model.x": _Payload(marker)}}, evil)
    # a text model that is present (the weight preflight would stop at a missing one before the checkpoint is read)
    prior = f"prior={{kind: mvdream, model: '{evil}', text_model: 'bundled:shapes-prior'}}"
    res = invoke("train", TINY, prior, "--out", tmp_path / "run", "--quiet")
    line = one_line(res, 2)
    assert "cannot read checkpoint" in line and str(evil) in line
    assert not marker.exists() and not (tmp_path / "run").exists()


def test_plain_pt_state_dict_still_loads(tmp_path):
    import torch

    from asdcli.priors.mvdream import _read_state_dict

    path = tmp_path / "weights.ckpt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    assert torch.equal(_read_state_dict(path)["w"], torch.ones(2))


def test_checkpoint_weights_are_safetensors_and_pickles_are_rejected(tmp_path):
    import torch

    from asdcli.engine import checkpoint as ckpt_io
    from asdcli.errors import UserError

    parts = {"generator": {"w": torch.ones(3)}, "background": {"b": torch.zeros(2)}}
    opt = {"state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.ones(3)}}, "param_groups": [{"lr": 0.1}]}
    final = ckpt_io.save_checkpoint(tmp_path / "ckpts", 1, parts, {"optimizer": opt}, {"torch_cpu": torch.ones(1)},
                                    {}, keep_last=2)
    suffixes = {p.suffix for p in final.iterdir()}
    assert suffixes <= {".safetensors", ".json"}, suffixes
    marker = tmp_path / "pwned"
    torch.save(_Payload(marker), final / "generator.safetensors")  # a pickle under a safetensors name
    with pytest.raises(UserError, match="damaged checkpoint file"):
        ckpt_io.load_part(final, "generator")
    assert not marker.exists()


def test_yaml_python_tags_never_construct_objects(tmp_path):
    from asdcli.errors import UserError
    from asdcli.recipe import load_dumped

    marker = tmp_path / "pwned"
    payload = f"!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]\n"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(payload)
    one_line(invoke("train", recipe, "--out", tmp_path / "run"), 2)
    res = invoke("train", TINY, f"seed={payload.strip()}", "--out", tmp_path / "run")  # an override value
    one_line(res, 2)
    with pytest.raises(UserError):
        load_dumped(payload)
    assert not marker.exists() and not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------- prompts → file names
HOSTILE = ["../../etc/passwd", "/abs/path", "..", ".", "", "~/home", "C:\\Windows\\x", "a/../../b", ".hidden",
           "CON", "nul", "com1", "x" * 1000, "a\x00b", "\u202e gnp.exe", "猫 on a mat", "🚀", "a:b*c?d|e<f>g\"h"]


@settings(max_examples=150, deadline=None, database=None, derandomize=True)
@given(prompts=st.lists(st.text(max_size=60) | st.sampled_from(HOSTILE), min_size=1, max_size=8, unique=True))
def test_prompts_become_safe_distinct_file_names(prompts):
    from asdcli.mesh.names import assign_filenames

    names = assign_filenames(prompts)
    stems = [names[p] for p in prompts]
    assert len(set(stems)) == len(stems)
    for stem in stems:
        assert stem and len(stem) <= 80 and re.fullmatch(r"[a-z0-9_-]+", stem), stem
        assert stem.lower() not in {"con", "prn", "aux", "nul", "com1", "lpt1"}
        assert Path(stem).name == stem and not stem.startswith((".", "-"))


# ----------------------------------------------------------------------------------------------- network
@pytest.fixture
def no_network(monkeypatch):
    """Every attempt to open a connection or resolve a host is refused and recorded; the test fails if there
    was any (recorded, because a library may swallow the refusal)."""
    attempts = []

    def refuse(*args, **kwargs):
        attempts.append(args[:2])
        raise OSError("network access refused by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    yield
    assert not attempts, f"network access attempted: {attempts!r}"


@pytest.mark.parametrize("prior, model", [
    ("{kind: stable-diffusion, model: stabilityai/stable-diffusion-2-1-base}", "stabilityai/stable-diffusion-2-1-base"),
    ("{kind: mvdream, model: MVDream/MVDream}", "MVDream/MVDream"),
])
def test_hub_id_with_hf_hub_offline_is_exit_2_naming_the_model(tmp_path, monkeypatch, no_network, prior, model):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    res = invoke("train", TINY, f"prior={prior}", "--out", tmp_path / "run", "--quiet")
    line = one_line(res, 2)
    assert model in line and "HF_HUB_OFFLINE=1" in line and "download" in line
    assert not (tmp_path / "run").exists()


def test_clip_hub_id_offline_is_exit_2_naming_the_model(tmp_path, monkeypatch, no_network):
    from asdcli.errors import UserError
    from asdcli.evaluate import load_clip

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="openai/clip-vit-base-patch32"):
        load_clip("openai/clip-vit-base-patch32")


def test_hub_id_offline_through_a_real_process(tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "OMP_NUM_THREADS": "1"}
    model = "stabilityai/stable-diffusion-2-1-base"
    proc = subprocess.run([sys.executable, "-m", "asdcli", "train", str(TINY), f"prior={{kind: stable-diffusion, "
                           f"model: {model}}}", "--out", str(tmp_path / "run"), "--quiet"], env=env,
                          capture_output=True, text=True, timeout=180)
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and model in lines[0] and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_local_models_never_touch_the_hub(tmp_path, monkeypatch, no_network):
    """Without HF_HUB_OFFLINE, a local folder (even a missing one) and the bundled tiny prior stay local:
    train and generate run with every connection refused."""
    import huggingface_hub

    def no_hub(*args, **kwargs):
        raise AssertionError("the hub client was called for a local model")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_hub)
    res = invoke("train", TINY, f"prior={{kind: stable-diffusion, model: '{tmp_path / 'sd'}'}}", "--out",
                 tmp_path / "bad")
    assert "not found" in one_line(res, 2)
    run = tmp_path / "run"
    res = invoke("train", TINY, *SMALL, "--steps", "1", "--out", run, "--quiet")
    assert res.exit_code == 0, res.output
    res = invoke("generate", "a red cube", "--checkpoint", run, "--out", tmp_path / "a.glb", "--resolution", "16")
    assert res.exit_code == 0, res.output
    files = {p.suffix for p in (run / "checkpoints" / "last").iterdir()}
    assert files <= {".safetensors", ".json"}, files
