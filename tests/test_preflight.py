"""Fail fast, offline first: a missing weight is ONE line and exit 2 within seconds (offline, or with the hub
unreachable), a hub id found in the local Hugging Face cache loads without any network, and local paths are
checked before anything heavy is imported."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from asdcli.errors import UserError
from asdcli.preflight import (
    Weight,
    clip_weight,
    resolve,
    text_weights,
    training_weights,
)

ROOT = Path(__file__).resolve().parents[1]
CLOSED_PORT = "http://127.0.0.1:9"  # the discard port: nothing listens, connections are refused at once
FAIL_FAST_S = 5.0  # the promise: a missing weight costs at most this on a loaded 2-core machine
SNAPSHOT = "0123456789abcdef0123456789abcdef01234567"


def run_asd(args, tmp_path, **env):
    """`python -m asdcli ARGS` in a fresh process with its own Hugging Face home and asd cache (no network);
    returns (completed process, wall seconds)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    full.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", HF_HOME=str(tmp_path / "hf"),
                XDG_CACHE_HOME=str(tmp_path / "xdg"), **env)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "asdcli", *map(str, args)], cwd=tmp_path, env=full,
                          capture_output=True, text=True, timeout=300)
    return proc, time.perf_counter() - t0


@pytest.mark.parametrize("recipe, hub_id, file", [
    ("mvdream_triplane", "MVDream/MVDream", "sd-v2.1-base-4view.pt"),
    ("sd_hyper_ingp_mg15", "stabilityai/stable-diffusion-2-1-base", "text_encoder/config.json"),
])
@pytest.mark.parametrize("network", ["offline", "unreachable"])
def test_missing_weights_fail_in_one_line_within_seconds(recipe, hub_id, file, network, tmp_path):
    env = {"HF_HUB_OFFLINE": "1"} if network == "offline" else {"HF_ENDPOINT": CLOSED_PORT}
    proc, seconds = run_asd(["train", ROOT / "recipes" / f"{recipe}.yaml"], tmp_path, **env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr  # no retry warnings, no traceback
    line = lines[0]
    assert f"prior.model: {hub_id} ({file})" in line and f"hf download {hub_id}" in line
    assert "prior.model=/path/to/" in line
    assert ("HF_HUB_OFFLINE=1" in line) if network == "offline" else ("unreachable" in line and CLOSED_PORT in line)
    assert seconds < FAIL_FAST_S, f"{seconds:.1f} s"
    assert not (tmp_path / "runs").exists()


def test_a_missing_weight_stops_asd_train_before_torch_is_imported(tmp_path):
    """The CLI runs `asd train`'s early checks before it imports torch to size its threads."""
    probe = ("import sys\nfrom asdcli.cli import app\n"
             "try:\n    app(['train', sys.argv[1]], prog_name='asd')\nexcept SystemExit as exc:\n"
             "    print('exit', exc.code, 'torch' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(PYTHONPATH=str(ROOT), HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"),
               HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", probe, str(ROOT / "recipes" / "mvdream_triplane.yaml")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip() == "exit 2 False", proc.stdout + proc.stderr
    assert "prior.model: MVDream/MVDream" in proc.stderr


def test_an_unreachable_hub_is_not_asked_again_for_a_minute(tmp_path):
    args = ["train", ROOT / "recipes" / "sd_hyper_ingp_mg15.yaml"]
    first, _ = run_asd(args, tmp_path, HF_ENDPOINT=CLOSED_PORT)
    memo = tmp_path / "xdg" / "asd" / "hub_unreachable.json"
    assert "Connection refused" in first.stderr and CLOSED_PORT in json.loads(memo.read_text())
    second, _ = run_asd(args, tmp_path, HF_ENDPOINT=CLOSED_PORT)
    assert second.returncode == 2 and "not asked again" in second.stderr and "refused" not in second.stderr
    memo.write_text(json.dumps({CLOSED_PORT: time.time() - 61}))  # a minute later the hub is asked again
    third, _ = run_asd(args, tmp_path, HF_ENDPOINT=CLOSED_PORT)
    assert "Connection refused" in third.stderr


def _fake_hub_cache(hf_home: Path, repo: str) -> Path:
    """A tiny SD folder laid out as the Hugging Face cache stores a download of `repo`."""
    from asdcli.priors.tiny import save_tiny_sd_folder

    entry = hf_home / "hub" / f"models--{repo.replace('/', '--')}"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(SNAPSHOT)
    return save_tiny_sd_folder(entry / "snapshots" / SNAPSHOT, seed=0, with_vae=True, text_dim=32)


TINY_HYPER = ["render.resolution=16", "render.samples_per_ray=16", "render.importance_samples=8",
              "train.val_views=2", "prompts.num_val=1", "train.device=cpu", "generator.text_dim=32",
              "generator.grid={n_levels: 2, n_features_per_level: 2, log2_hashmap_size: 8, base_resolution: 4, "
              "per_level_scale: 2.0}", "generator.hyper_hidden=8", "generator.mlp_hidden=8"]


def test_a_hub_id_in_the_local_cache_trains_and_generates_without_network(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from asdcli.engine.inference import field_state, load_model

    _fake_hub_cache(tmp_path / "hf", "asd-test/tiny-sd")
    run = tmp_path / "run"
    proc, _ = run_asd(["train", ROOT / "recipes" / "sd_hyper_ingp_mg15.yaml", "prior.model=asd-test/tiny-sd",
                       "--steps", 1, "--out", run, "--quiet", *TINY_HYPER], tmp_path, HF_ENDPOINT=CLOSED_PORT)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((run / "meta.json").read_text())["step"] == 1
    assert "Retry" not in proc.stderr and "127.0.0.1" not in proc.stderr  # no loader went to the network
    assert not (tmp_path / "xdg" / "asd" / "hub_unreachable.json").exists()  # and no probe was needed
    # generate / export / eval load the run's text encoder the same way (in process: the hub reads its cache
    # folder and endpoint from these constants, the closed port included)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "ENDPOINT", CLOSED_PORT)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    model = load_model(run, "cpu")
    assert model.cfg.prior.model == "asd-test/tiny-sd"
    state, text = field_state(model, ["a red cube"])
    assert text.pooled.shape == (1, 32) and text.pooled.abs().sum() > 0
    assert "HF_HUB_OFFLINE" not in os.environ  # forced offline only while loading


def test_preflight_imports_no_torch_diffusers_or_transformers(tmp_path):
    folder = tmp_path / "sd"
    (folder / "text_encoder").mkdir(parents=True)
    code = ("import sys; from asdcli.recipe import merged_recipe; from asdcli.preflight import resolve, "
            "training_weights\n"
            f"data = merged_recipe({str(ROOT / 'recipes' / 'sd_hyper_ingp_mg15.yaml')!r}, ['prior.model={folder}'])\n"
            "try:\n    resolve(training_weights(data['prior']))\nexcept Exception as exc:\n    print(exc)\n"
            "print(sorted(m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, timeout=120).stdout.splitlines()
    assert "has no text_encoder/config.json" in out[0] and out[-1] == "[]"


# ----------------------------------------------------------------------------------------- in process
class Prior:  # what a validated prior section looks like to the preflight (attributes with defaults filled)
    def __init__(self, **kw):
        self.__dict__.update(kw)


def test_local_folders_are_checked_for_what_the_loader_needs(tmp_path):
    from asdcli.priors.tiny import save_tiny_sd_folder

    latent = save_tiny_sd_folder(tmp_path / "sd", seed=0, with_vae=True, text_dim=32)
    [found] = resolve(training_weights({"kind": "stable-diffusion", "model": str(latent)}))
    assert found.path == latent and not found.hub
    for part in ("vae", "unet"):  # a latent UNet without its VAE would load as a pixel-space prior: refused
        (latent / part).rename(tmp_path / f"{part}.bak")
        with pytest.raises(UserError, match=rf"prior.model: .* has no {part}/ subfolder"):
            resolve(training_weights({"kind": "stable-diffusion", "model": str(latent)}))
        (tmp_path / f"{part}.bak").rename(latent / part)
    # generate needs the text side only
    (latent / "unet").rename(tmp_path / "unet.bak")
    assert resolve(text_weights(Prior(kind="stable-diffusion", model=str(latent), revision=None)))[0].path == latent
    with pytest.raises(UserError, match="prior.model: .*not found: the path does not exist; set prior.model=PATH"):
        resolve(training_weights({"kind": "stable-diffusion", "model": str(tmp_path / "nowhere")}))


def test_which_weights_each_prior_needs():
    mv = dict(kind="mvdream", model="MVDream/MVDream", checkpoint_file="sd-v2.1-base-4view.pt", revision=None)
    with_text = training_weights(Prior(**mv, text_model="stabilityai/stable-diffusion-2-1-base"))
    assert [(w.key, w.file) for w in with_text] == [("prior.model", "sd-v2.1-base-4view.pt"),
                                                    ("prior.text_model", None)]
    # text_model None = the checkpoint's own text encoder: nothing else to resolve, and generate reads the .pt
    assert [w.key for w in training_weights(Prior(**mv, text_model=None))] == ["prior.model"]
    assert [w.key for w in text_weights(Prior(**mv, text_model=None))] == ["prior.model"]
    assert [w.key for w in text_weights(Prior(**mv, text_model="x/y"))] == ["prior.text_model"]
    # a raw recipe: only what it writes (a hub id without its checkpoint_file waits for the validated config)
    assert training_weights({"kind": "mvdream", "model": "MVDream/MVDream"}) == []
    assert training_weights({"kind": "tiny-random", "seed": 0}) == []
    assert resolve(training_weights({"kind": "stable-diffusion", "model": "bundled:shapes-prior"}))[0].path.is_dir()


def test_a_cached_clip_resolves_to_its_snapshot_and_a_missing_one_names_the_flag(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from asdcli.clip_model import save_tiny_clip
    from asdcli.preflight import local_clip

    entry = tmp_path / "hub" / "models--asd-test--tiny-clip"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(SNAPSHOT)
    snapshot = save_tiny_clip(entry / "snapshots" / SNAPSHOT)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert Path(local_clip("asd-test/tiny-clip")) == snapshot
    with pytest.raises(UserError) as info:
        local_clip("openai/clip-vit-large-patch14")
    msg = str(info.value)
    assert "--clip-model: openai/clip-vit-large-patch14 (config.json)" in msg and "\n" not in msg
    assert "hf download openai/clip-vit-large-patch14" in msg and "--clip-model /path/to/" in msg


def test_offline_first_forces_the_hub_offline_only_while_everything_is_cached(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    from asdcli.preflight import offline_first

    entry = tmp_path / "hub" / "models--asd-test--ckpt"
    (entry / "refs").mkdir(parents=True)
    (entry / "refs" / "main").write_text(SNAPSHOT)
    (entry / "snapshots" / SNAPSHOT).mkdir(parents=True)
    (entry / "snapshots" / SNAPSHOT / "model.pt").write_bytes(b"\0")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    weight = Weight("prior.model", "asd-test/ckpt", file="model.pt")
    with offline_first([weight]) as found:
        assert found[0].path.name == "model.pt" and found[0].hub
        assert os.environ["HF_HUB_OFFLINE"] == "1" and constants.HF_HUB_OFFLINE is True
    assert "HF_HUB_OFFLINE" not in os.environ and constants.HF_HUB_OFFLINE is False
    assert clip_weight("bundled:shapes-clip").key == "--clip-model"
