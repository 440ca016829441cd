"""The transformers-free text path of ShapesWorld priors (asdcli.shapes.bundled_text) against transformers'
CLIPTokenizer + CLIPTextModel, on the bundled prior and on a random CLIP text model saved to disk."""

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from asdcli.bundled import bundled_prior
from asdcli.errors import UserError
from asdcli.shapes.bundled_text import ClipBpeTokenizer, load_bundled_text, runs_bundled_text, split_words

ROOT = Path(__file__).resolve().parents[1]
EDGE = ["", " ", "a red cube", "A  RED\tcube", "a very " * 12 + "long prompt", "x" * 50,
        "a red cube<|endoftext|>blue", "it's they'll we've I'm", "3 12 x2 2.5", "café naïve ÉCOLE Σίσυφος 日本 😀",
        "-- !! ,.; ''s", "\u00a0nbsp\u2003em\nnew line", "\x1cfoo\x1d"]
TOL = 1e-5  # float32 rounding: attention and layer norms may sum in another order


def _prompts(n: int = 300) -> list[str]:
    from asdcli.prompts import read_library

    lib = read_library("shapesworld")
    pool = [p for split in lib.values() for p in split]
    words = " ".join(pool[:200] + EDGE).split(" ")
    rng = random.Random(0)
    mixed = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 14))) for _ in range(n)]
    return EDGE + rng.sample(pool, min(n, len(pool))) + mixed


def _compare(folder: Path, prompts: list[str]) -> None:
    from asdcli.priors.text import load_clip_text

    ours = load_bundled_text(folder, "x", torch.device("cpu"))
    ref = load_clip_text(folder, "x", torch.device("cpu"))
    with pytest.warns(UserWarning, match="truncated"):
        ids_ours = ours.tokenize(prompts)
    with pytest.warns(UserWarning, match="truncated"):
        ids_ref = ref.tokenize(prompts)
    mismatched = [p for p, a, b in zip(prompts, ids_ours, ids_ref, strict=True) if not torch.equal(a, b)]
    assert not mismatched, mismatched[:3]
    a, b = ours.encode_uncached(prompts), ref.encode_uncached(prompts)
    assert a.tokens.shape == b.tokens.shape and a.pooled.shape == b.pooled.shape
    assert (a.tokens - b.tokens).abs().max().item() <= TOL
    assert (a.pooled - b.pooled).abs().max().item() <= TOL


def test_bundled_prior_text_matches_transformers():
    _compare(bundled_prior(), _prompts())


@pytest.mark.parametrize("act", ["quick_gelu", "gelu"])
def test_random_clip_text_model_matches_transformers(tmp_path, act):
    from transformers import CLIPTextConfig, CLIPTextModel

    src = bundled_prior()
    folder = tmp_path / "prior"
    shutil.copytree(src / "tokenizer", folder / "tokenizer")
    torch.manual_seed(1)
    config = CLIPTextConfig(vocab_size=617, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                            num_attention_heads=3, max_position_embeddings=20, hidden_act=act, bos_token_id=615,
                            eos_token_id=616, pad_token_id=616)
    model = CLIPTextModel(config)
    with torch.no_grad():  # random, larger than init so that differences would show
        for p in model.parameters():
            p.normal_(0, 0.3)
    model.save_pretrained(folder / "text_encoder")
    _compare(folder, _prompts(60))


def test_split_words_follows_clip_pattern():
    assert split_words("it's a 12-sided box!!") == ["it", "'s", "a", "1", "2", "-", "sided", "box", "!!"]


def test_only_the_shapesworld_kind_on_a_shapesworld_folder_takes_the_bundled_path(tmp_path):
    from asdcli.priors.stable_diffusion import StableDiffusionPrior
    from asdcli.priors.text import TextEncoder
    from asdcli.shapes.prior import ShapesWorldPrior, ShapesWorldPriorConfig

    assert runs_bundled_text(bundled_prior())
    shutil.copytree(bundled_prior() / "tokenizer", tmp_path / "tokenizer")
    shutil.copytree(bundled_prior() / "text_encoder", tmp_path / "text_encoder")
    assert not runs_bundled_text(tmp_path)  # a folder without shapesworld_prior.json: transformers
    fast = ShapesWorldPrior.build_text_encoder(ShapesWorldPriorConfig(), torch.device("cpu"))
    assert isinstance(fast.tokenizer, ClipBpeTokenizer) and isinstance(fast, TextEncoder)
    plain = ShapesWorldPrior.build_text_encoder(ShapesWorldPriorConfig(model=str(tmp_path)), torch.device("cpu"))
    assert not isinstance(plain.tokenizer, ClipBpeTokenizer)
    assert fast.encoder_id == "bundled:shapes-prior" and plain.encoder_id == str(tmp_path)
    torch.testing.assert_close(fast.encode(["a red cube"]).tokens, plain.encode(["a red cube"]).tokens,
                               atol=1e-5, rtol=0)
    with pytest.raises(UserError, match="prior.kind: shapesworld in the recipe"):  # the folder records its kind
        StableDiffusionPrior.build_text_encoder(ShapesWorldPriorConfig(kind="stable-diffusion"), torch.device("cpu"))


def test_generate_on_the_bundled_model_does_not_import_transformers(tmp_path):
    code = ("import sys; from pathlib import Path; from asdcli.commands import generate_command; "
            f"generate_command('a red cube', Path({str(tmp_path / 'a.glb')!r}), checkpoint=None, resolution=24, "
            "threshold=None, seed=0, turntable=None, views_png=None, views=8, max_faces=None, device='cpu', "
            "verbose=False); print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('transformers', 'diffusers'))))")
    proc = subprocess.run([sys.executable, "-c", "import json; " + code], capture_output=True, text=True,
                          cwd=ROOT, env={"PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-500:]
    assert json.loads(proc.stdout.strip().splitlines()[-1]) == []
    assert (tmp_path / "a.glb").stat().st_size > 1000
