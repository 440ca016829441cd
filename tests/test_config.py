"""Strict recipes: types, unknown keys, precedence, schedules, base inheritance, dump → reload."""

from pathlib import Path

import pytest
import yaml

from asdcli.config import RunConfig, to_plain
from asdcli.errors import ConfigError
from asdcli.recipe import dump_recipe, load_dumped, load_recipe, parse_override
from asdcli.schedule import parse_schedule

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "recipes" / "tiny_cpu.yaml"


def write(tmp_path: Path, data, name="r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return p


def test_tiny_recipe_loads_frozen():
    cfg = load_recipe(TINY)
    assert isinstance(cfg, RunConfig)
    with pytest.raises(AttributeError):
        cfg.seed = 3  # frozen


def test_dump_reload_equal():
    cfg = load_recipe(TINY, ["train.lr=0.02", "loss.t_max={linear: {from: 0.9, to: 0.4, start: 0, end: 10}}"])
    text = dump_recipe(cfg)
    assert "schema_version: 1" in text and "!!python" not in text
    assert load_dumped(text) == cfg


def test_unknown_key_did_you_mean(tmp_path):
    raw = yaml.safe_load(TINY.read_text())
    raw["train"]["stpes"] = 3
    with pytest.raises(ConfigError, match=r"train\.stpes: unknown key; did you mean 'steps'\?"):
        load_recipe(write(tmp_path, raw))


def test_unknown_kind_did_you_mean():
    with pytest.raises(ConfigError, match=r"loss\.kind: unknown loss kind 'asf'; did you mean 'asd'\?"):
        load_recipe(TINY, ["loss.kind=asf"])


def test_unknown_key_in_kind_section():
    with pytest.raises(ConfigError, match=r"loss\.guidance_scal: unknown key; did you mean 'guidance_scale'"):
        load_recipe(TINY, ["loss.guidance_scal=5"])


@pytest.mark.parametrize("override, message", [
    ("train.steps=ten", r"train\.steps: expected an integer, got 'ten'"),
    ("train.steps=-3", r"train\.steps: must be >= 1"),
    ("train.optimizer=sgd", r"train\.optimizer: 'sgd' is not allowed.*allowed: 'adam', 'adamw', 'adan'"),
    ("render.camera.fovy=[40]", r"render\.camera\.fovy: expected a list of 2 values"),
    ("train.device=tpu", r"train\.device: expected auto, cpu, cuda or cuda:N"),
    ("loss.t_min={cosine: 1}", r"loss\.t_min: unknown schedule 'cosine'"),
    ("render.resolution={piecewise: {5: 8}}", r"first key must be step 0"),
])
def test_wrong_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(TINY, [override])


def test_override_without_equals():
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_override("train.steps")


def test_precedence_defaults_base_recipe_overrides_flags(tmp_path):
    base = yaml.safe_load(TINY.read_text())
    base["train"]["lr"] = 0.5
    base["train"]["log_every"] = 7
    base["seed"] = 11
    write(tmp_path, base, "base.yaml")
    child = write(tmp_path, {"base": "base.yaml", "train": {"lr": 0.25, "steps": 30}}, "child.yaml")
    cfg = load_recipe(child)
    assert cfg.train.keep_last == 3  # default
    assert cfg.seed == 11 and cfg.train.log_every == 7  # base
    assert cfg.train.lr.value == 0.25  # recipe beats base
    cfg = load_recipe(child, ["train.lr=0.125", "train.steps=40"], {"train.steps": 50})
    assert cfg.train.lr.value == 0.125  # override beats recipe
    assert cfg.train.steps == 50  # flag beats override


def test_base_kind_change_replaces_section(tmp_path):
    write(tmp_path, yaml.safe_load(TINY.read_text()), "base.yaml")
    child = write(tmp_path, {"base": "base.yaml", "loss": {"kind": "asd", "shift_ratio": 0.2}}, "c.yaml")
    assert load_recipe(child).loss.shift_ratio == 0.2


def test_base_loop_detected(tmp_path):
    write(tmp_path, {"base": "b.yaml", "name": "a"}, "a.yaml")
    write(tmp_path, {"base": "a.yaml"}, "b.yaml")
    with pytest.raises(ConfigError, match="loops back"):
        load_recipe(tmp_path / "a.yaml")


@pytest.mark.parametrize("text, message", [
    ("", "the recipe is empty"),
    ("- a\n- b\n", "a recipe is a YAML mapping"),
    ("name: [unclosed\n", "malformed YAML at line"),
])
def test_bad_files(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(write(tmp_path, text))


def test_missing_and_directory(tmp_path):
    with pytest.raises(ConfigError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="is a directory"):
        load_recipe(tmp_path)


def test_schedules():
    lin = parse_schedule({"linear": {"from": 0.98, "to": 0.5, "start": 0, "end": 1.0, "unit": "fraction"}}, "x")
    assert lin.at(0, 100) == pytest.approx(0.98)
    assert lin.at(50, 100) == pytest.approx(0.74)
    assert lin.at(100, 100) == pytest.approx(0.5)
    assert lin.at(500, 100) == pytest.approx(0.5)
    late = parse_schedule({"linear": {"from": 0, "to": 10, "start": 0.8, "end": 1.0, "unit": "fraction"}}, "x")
    assert late.at(79, 100) == 0 and late.at(90, 100) == pytest.approx(5.0)
    pw = parse_schedule({"piecewise": {0: 64, 10000: 256}}, "x")
    assert pw.at(9999, 1) == 64 and pw.at(10000, 1) == 256
    assert parse_schedule(3, "x").at(7, 9) == 3.0
    keys = parse_schedule({"keyframes": {0: 0.98, 1000: 0.5, 7999: 0.5, 8000: 0.35}}, "x")
    assert keys.at(500, 1) == pytest.approx(0.74) and keys.at(5000, 1) == pytest.approx(0.5)
    assert keys.at(7999, 1) == pytest.approx(0.5) and keys.at(8000, 1) == 0.35 and keys.at(10**6, 1) == 0.35
    assert keys.lowest() == 0.35
    for sched in (lin, pw, keys):
        assert parse_schedule(sched.to_plain(), "x") == sched
    with pytest.raises(ConfigError, match=r"x\.keyframes: the first key must be step 0"):
        parse_schedule({"keyframes": {10: 1.0, 20: 2.0}}, "x")
    with pytest.raises(ConfigError, match=r"did you mean 'keyframes'"):
        parse_schedule({"keyframe": {0: 1.0}}, "x")


def test_schema_version_mismatch():
    raw = yaml.safe_load(TINY.read_text())
    raw["schema_version"] = 99
    with pytest.raises(ConfigError, match="schema_version"):
        load_recipe(raw=raw)


def test_plain_is_yaml_safe():
    cfg = load_recipe(TINY)
    assert yaml.safe_load(yaml.safe_dump(to_plain(cfg))) == to_plain(cfg)


def test_lr_schedules_may_start_at_zero_but_never_go_negative():
    warmup = load_recipe(TINY, ["train.lr={linear: {from: 0, to: 0.01, start: 0, end: 100}}"])
    assert warmup.train.lr.at(50, 1000) == pytest.approx(0.005)
    for bad in ("train.lr=0", "train.lr={piecewise: {0: 0.01, 50: -0.001}}"):
        with pytest.raises(ConfigError, match=r"train\.lr: must be >= 0 at every step and > 0 somewhere"):
            load_recipe(TINY, [bad])
    with pytest.raises(ConfigError, match=r"train\.lr_background: must be >= 0"):
        load_recipe(TINY, ["train.lr_background={linear: {from: 0.01, to: -1, start: 0, end: 10}}"])


def test_an_override_may_change_a_schedules_form():
    recipe = ROOT / "recipes" / "shapes_generator.yaml"  # guidance_scale is {piecewise: ...} there
    cfg = load_recipe(recipe, ["loss.guidance_scale={linear: {from: 7.5, to: 1.5, start: 0, end: 2500}}"])
    assert cfg.loss.guidance_scale.kind == "linear" and cfg.loss.guidance_scale.at(1250, 1) == pytest.approx(4.5)
    assert load_recipe(recipe, ["loss.guidance_scale=3"]).loss.guidance_scale.value == 3.0
    same_form = load_recipe(recipe, ["loss.guidance_scale={piecewise: {0: 3}}"]).loss.guidance_scale
    assert same_form.points == ((0, 3.0),)  # the whole schedule, not its keys merged with the recipe's
    partial = load_recipe(recipe, ["loss.t_min.linear.to=0.05"]).loss.t_min  # a key path still edits one key
    assert (partial.start_value, partial.end_value, partial.end) == (0.5, 0.05, 1000.0)


def test_a_child_recipe_replaces_its_bases_schedule(tmp_path):
    child = write(tmp_path, {"base": str(ROOT / "recipes" / "shapes_generator.yaml"),
                             "loss": {"guidance_scale": {"piecewise": {0: 3}}, "t_max": 0.4}})
    cfg = load_recipe(child)
    assert cfg.loss.guidance_scale.points == ((0, 3.0),) and cfg.loss.t_max.value == 0.4
    assert cfg.loss.t_min.kind == "linear"  # what the child leaves alone is the base's


def test_weighting_may_switch_at_a_step():
    switched = "loss.weighting={piecewise: {0: sds, 8000: uniform}}"
    cfg = load_recipe(TINY, [switched])
    assert [cfg.loss.weighting.at(s) for s in (0, 7999, 8000, 10**6)] == ["sds", "sds", "uniform", "uniform"]
    again = load_dumped(dump_recipe(cfg)).loss.weighting
    assert again == cfg.loss.weighting and again.points == ((0, "sds"), (8000, "uniform"))
    plain = load_recipe(TINY)
    assert to_plain(plain)["loss"]["weighting"] == "sds"  # one name dumps as the name, as recipes write it
    assert load_recipe(TINY, [switched, "loss.weighting=fantasia3d"]).loss.weighting.at(9000) == "fantasia3d"


@pytest.mark.parametrize("override, message", [
    ("loss.weighting={piecewise: {0: sds, 8000: unifrom}}",
     r"loss\.weighting\.piecewise\.8000: 'unifrom' is not allowed; did you mean 'uniform'\?"),
    ("loss.weighting={piecewise: {100: uniform}}", r"loss\.weighting\.piecewise: the first key must be step 0"),
    ("loss.weighting={linear: {from: 0, to: 1, start: 0, end: 1}}",
     r"loss\.weighting: expected one of 'sds', 'uniform', 'fantasia3d' or \{piecewise"),
    ("loss.weighting=3", r"loss\.weighting: 3 is not allowed"),
])
def test_weighting_schedule_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(TINY, [override])


def test_zero_is_allowed_exactly_where_a_field_says_it_means_none(tmp_path):
    """Integer sizes and counts of every component kind refuse 0, except the fields marked ZERO_OK (layers, noise
    width, bias volumes), which load with 0. The list is pinned: moving it into field metadata changed no field."""
    import dataclasses

    from asdcli.registry import REGISTRY, config_class

    zero_ok = []
    for family in ("prior", "generator", "loss"):
        for kind in sorted(REGISTRY[family]):
            for f in dataclasses.fields(config_class(family, kind, f"{family}.kind")):
                if f.type not in ("int", int) or f.name == "seed":
                    continue
                child = write(tmp_path, {"base": str(TINY), family: {"kind": kind, f.name: 0}})
                if f.metadata.get("zero_ok"):
                    assert getattr(getattr(load_recipe(child), family), f.name) == 0
                    zero_ok.append(f"{kind}.{f.name}")
                else:
                    with pytest.raises(ConfigError, match=rf"^{family}\.{f.name}: "):
                        load_recipe(child)
    assert sorted(zero_ok) == ["3dconv-net.bias_volume_max_res", "3dconv-net.mapping_layers", "3dconv-net.z_dim",
                               "nerf.mlp_layers", "triplane-transformer.mlp_layers",
                               "triplane-transformer.num_layers", "triplane.num_layers"]
