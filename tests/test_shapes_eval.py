"""Ground-truth metrics of `asd eval` on ShapesWorld prompts, checked with a generator that IS the world."""

import torch

from asdcli.engine.inference import LoadedModel
from asdcli.generators.base import FieldOutput, Generator
from asdcli.recipe import load_recipe
from asdcli.shapes.evaluation import ground_truth_metrics
from asdcli.shapes.world.grammar import parse_prompt
from asdcli.shapes.world.scenes import scene_field


class OracleGenerator(Generator):
    """state = prompt ids [P]; query = the analytic scene (features are logits of the true colour)."""

    def __init__(self, prompts):
        super().__init__()
        self.names = list(dict.fromkeys(prompts))
        self.fields = [scene_field(parse_prompt(p)) for p in self.names]

    def forward(self, text, noise=None):
        return torch.tensor([self.names.index(p) for p in text.prompts])

    def query(self, state, points):
        fields = [self.fields[int(i)] for i in state]
        sdf = torch.stack([f.sdf(x) for f, x in zip(fields, points, strict=True)])
        rgb = torch.stack([f.color(x) for f, x in zip(fields, points, strict=True)])
        return FieldOutput(sdf, torch.logit(rgb.clamp(1e-4, 1 - 1e-4)))


class PromptText:
    def __init__(self, prompts):
        self.prompts = prompts

    def to(self, *args):
        return self


def _model(prompts, wrong=None):
    cfg = load_recipe(raw={**__import__("yaml").safe_load(open("recipes/tiny_cpu.yaml"))})
    gen = OracleGenerator(prompts + list((wrong or {}).values()))
    swap = wrong or {}
    return LoadedModel(cfg, gen, None, lambda ps: PromptText([swap.get(p, p) for p in ps]), None,
                       torch.device("cpu"))


def test_oracle_scores_perfectly():
    prompts = ["a red cube", "a blue sphere", "a green cone on top of a yellow cube", "a pink torus"]
    cols = ground_truth_metrics(_model(prompts), prompts, res=32)
    assert all(v > 0.97 for v in cols["iou"])
    assert cols["shape_r@1"] == [1.0, 1.0, 1.0, 1.0]
    assert all(v < 0.01 for v in cols["color_error"])
    assert all(0 < b < 0.8 for b in cols["iou_blob_baseline"])


def test_wrong_shape_is_caught():
    prompts = ["a red cube", "a blue torus"]
    cols = ground_truth_metrics(_model(prompts, wrong={"a blue torus": "a blue cube"}), prompts, res=32)
    assert cols["shape_r@1"] == [1.0, 0.0]
    assert cols["iou"][1] < 0.5


def test_non_shapesworld_prompts_get_no_columns():
    assert ground_truth_metrics(_model(["a red cube"]), ["a DSLR photo of a corgi"]) == {}
