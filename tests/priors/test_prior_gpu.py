"""fp16 against fp32 noise predictions of both priors on a CUDA device (`-m gpu`; skipped without CUDA).

The priors run their UNets in fp16 on CUDA by default (dtype auto); these tests bound what that costs against
fp32 on the same inputs: tiny random SD folders (ε- and v-prediction) and the tiny v2.1-style MVDream golden
checkpoint. Tolerance: max |ε16 − ε32| ≤ REL · max |ε32| + ABS (fp16 keeps ~3 significant digits; errors grow
through the layers). No GPU was available to this change: measured with the same code in fp16 on a 2-core CPU
(2026-12-07): SD ε 2.4e-3 of max |ε32| 1.08, SD v 1.8e-3 of 3.27, MVDream 1.3e-4 of 0.139.
"""

from __future__ import annotations

import pytest
import torch

from asdcli.priors.mvdream import MVDreamPrior, MVDreamPriorConfig
from asdcli.priors.stable_diffusion import StableDiffusionPrior, StableDiffusionPriorConfig
from asdcli.priors.tiny import save_tiny_sd_folder
from tests.helpers.goldens import checkpoint, golden

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]
REL, ABS = 1e-2, 1e-3


def fp16_error(make, inputs, device: str) -> tuple[float, float]:
    """(max |ε16 − ε32|, max |ε32|) of the prior `make(dtype)` builds, on `inputs` (z_t, t, text, cameras)."""
    out = {}
    for dtype in ("float32", "float16"):
        prior = make(dtype).to(device)
        z, t, text, cams = (None if x is None else x.to(device) for x in inputs)
        out[dtype] = prior.predict_noise(z, t, text, cams).float().cpu()
        assert out[dtype].dtype == torch.float32 and torch.isfinite(out[dtype]).all()
    return float((out["float16"] - out["float32"]).abs().max()), float(out["float32"].abs().max())


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_stable_diffusion_fp16_matches_fp32(tmp_path, prediction_type, device="cuda"):
    folder = save_tiny_sd_folder(tmp_path / "sd", seed=0, with_vae=True, text_dim=32,
                                 prediction_type=prediction_type)

    def make(dtype):
        return StableDiffusionPrior(StableDiffusionPriorConfig(model=str(folder), dtype=dtype), device)

    probe = make("float32")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([20, 300, 600, 980])
    text = probe.encode_text(["a red cube", "a blue sphere", "", "a cat"]).tokens
    err, scale = fp16_error(make, (z, t, text, None), device)
    assert err <= REL * scale + ABS, (err, scale)


def test_mvdream_fp16_matches_fp32(tmp_path, device="cuda"):
    path, g = checkpoint(tmp_path, "v21"), golden("v21")

    def make(dtype):
        return MVDreamPrior(MVDreamPriorConfig(model=str(path), image_size=16, head_channels=16, dtype=dtype), device)

    views = g["x"].shape[0] // 2
    context = torch.cat([g["text"][:1].expand(views, -1, -1), g["text"][1:].expand(views, -1, -1)])
    err, scale = fp16_error(make, (g["x"], g["t"], context, g["cameras"]), device)
    assert err <= REL * scale + ABS, (err, scale)
