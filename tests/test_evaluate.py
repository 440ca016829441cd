"""CLIP evaluation: a tiny random CLIP saved offline and loaded through ClipScorer's real path; metrics
checked against a direct computation with CLIPModel, R@1 on a case with a known answer; report files."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from asdcli.clip_model import CLIP_MEAN, CLIP_STD, save_tiny_clip
from asdcli.errors import UserError
from asdcli.evaluate import ClipScorer, EvalReport, clip_metrics

transformers = pytest.importorskip("transformers")

PROMPTS = ["a red cube", "a blue sphere on top of a green cone", "ein grünes Würfelchen"]


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return save_tiny_clip(tmp_path_factory.mktemp("tiny_clip"), seed=0)


@pytest.fixture(scope="module")
def scorer(clip_dir):
    torch.set_num_threads(1)
    return ClipScorer(clip_dir, device="cpu", batch_size=2)


def _unwrap(out):
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def _direct_text(clip_dir, prompts):
    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    tokenizer = transformers.CLIPTokenizer.from_pretrained(clip_dir)
    tokens = tokenizer(prompts, padding="max_length", max_length=77, return_tensors="pt")
    with torch.no_grad():
        return F.normalize(_unwrap(model.get_text_features(input_ids=tokens["input_ids"],
                                                           attention_mask=tokens["attention_mask"])), dim=-1)


def _direct_image(clip_dir, images):
    """images [N, 32, 32, 3] in [0, 1] (already the model's size: no resize) → normalised embeddings."""
    model = transformers.CLIPModel.from_pretrained(clip_dir).eval()
    pixels = (torch.as_tensor(images).permute(0, 3, 1, 2) - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) \
        / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        return F.normalize(_unwrap(model.get_image_features(pixel_values=pixels.float())), dim=-1)


def _images(count, size=32, seed=1):
    return torch.rand(count, size, size, 3, generator=torch.Generator().manual_seed(seed)).numpy()


def test_embeddings_match_the_model(scorer, clip_dir):
    text = scorer.text_embeddings(PROMPTS)
    assert text.shape == (3, 16)
    torch.testing.assert_close(text, _direct_text(clip_dir, PROMPTS), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    images = _images(5)
    emb = scorer.image_embeddings(images)  # batch_size 2: three batches
    torch.testing.assert_close(emb, _direct_image(clip_dir, images), atol=1e-5, rtol=1e-5)
    uint8 = scorer.image_embeddings((images * 255).round().astype(np.uint8))
    assert torch.allclose(uint8, emb, atol=0.05)


def test_images_are_resized_to_the_model_size(scorer):
    big = torch.rand(2, 64, 48, 3)
    pixels = scorer.preprocess(big)
    assert pixels.shape == (2, 3, 32, 32)
    assert scorer.image_embeddings(big).shape == (2, 16)


def test_metrics_equal_a_direct_computation(scorer, clip_dir):
    views = 2
    images = _images(len(PROMPTS) * views, seed=3).reshape(len(PROMPTS), views, 32, 32, 3)
    metrics = scorer.score(PROMPTS, images)
    img = _direct_image(clip_dir, images.reshape(-1, 32, 32, 3)).view(len(PROMPTS), views, -1)
    txt = _direct_text(clip_dir, PROMPTS)
    for p in range(len(PROMPTS)):
        cos = [float(img[p, v] @ txt[p]) for v in range(views)]
        assert metrics["clip_similarity"][p].item() == pytest.approx(sum(cos) / views, abs=1e-5)
        assert metrics["clip_score"][p].item() == pytest.approx(
            sum(max(100 * c, 0.0) for c in cos) / views, abs=1e-3)
        hits = [int(torch.argmax(img[p, v] @ txt.T)) == p for v in range(views)]
        assert metrics["r_at_1"][p].item() == pytest.approx(sum(hits) / views)


def test_r_at_1_and_clamp_on_a_known_case():
    text = torch.eye(4)[:3]  # prompt q ↔ basis vector e_q
    views = torch.stack([
        torch.stack([torch.eye(4)[0], torch.eye(4)[0] + 0.1]),  # prompt 0: both views retrieve prompt 0
        torch.stack([torch.eye(4)[1], torch.eye(4)[0]]),  # prompt 1: one of two views
        torch.stack([torch.eye(4)[0], -torch.eye(4)[2]]),  # prompt 2: none; the second is anti-aligned
    ])
    metrics = clip_metrics(views, text)
    torch.testing.assert_close(metrics["r_at_1"], torch.tensor([1.0, 0.5, 0.0]))
    assert metrics["r_at_1"].mean().item() == pytest.approx(0.5)
    assert metrics["clip_similarity"][2].item() == pytest.approx(-0.5)  # plain cosine: (0 + −1) / 2
    assert metrics["clip_score"][2].item() == pytest.approx(0.0)  # ×100, clamped at 0 per view
    assert metrics["clip_score"][1].item() == pytest.approx(50.0)
    with pytest.raises(ValueError):
        clip_metrics(views[0], text)


def test_missing_models_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ClipScorer(tmp_path / "nowhere" / "clip")
    with pytest.raises(UserError, match="not a loadable"):
        ClipScorer(tmp_path)  # an empty folder
    with pytest.raises(UserError, match="hf download") as info:  # HF_HUB_OFFLINE=1 (conftest): no network
        ClipScorer("asd-tests/no-such-clip-model")
    assert "\n" not in str(info.value)


def test_report_json_csv_and_table(tmp_path):
    metrics = {"clip_similarity": torch.tensor([0.25, 0.35, 0.30]), "r_at_1": [1.0, 0.0, 0.5],
               "iou": [0.9, float("nan"), 0.7]}
    report = EvalReport.build(["a, b", 'say "hi"', "c"], metrics, meta={"model": "tiny", "views": 4})
    assert report.summary["n_prompts"] == 3
    assert report.summary["clip_similarity"] == pytest.approx(0.3)
    assert report.summary["iou"] == pytest.approx(0.8)  # undefined values are left out of the mean
    data = json.loads(report.write_json(tmp_path / "eval.json").read_text())
    assert data["meta"] == {"model": "tiny", "views": 4} and data["prompts"][1]["iou"] is None
    assert data["summary"]["r_at_1"] == pytest.approx(0.5)
    with open(report.write_csv(tmp_path / "eval.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["prompt"] for r in rows] == ["a, b", 'say "hi"', "c"]
    assert float(rows[0]["clip_similarity"]) == pytest.approx(0.25) and rows[1]["iou"] == ""
    from rich.console import Console

    console = Console(record=True, width=120)
    console.print(report.table(max_rows=2))
    text = console.export_text()
    assert "mean over 3 prompts" in text and "1 more" in text and "0.3000" in text
    with pytest.raises(ValueError):
        EvalReport.build(["a"], {"x": [1.0, 2.0]})
    assert math.isfinite(report.summary["r_at_1"])
