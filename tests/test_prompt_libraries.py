"""The paper's prompt libraries ship inside the package and the paper recipes name them: they resolve by name
from any working directory, keep their splits and attribution, and nothing in the project points outside it."""

import gzip
import json
import re
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from asdcli.cli import app
from asdcli.errors import UserError
from asdcli.prompts import PAPER_LIBRARIES, read_library, read_split

ROOT = Path(__file__).resolve().parents[1]
ASSETS = ROOT / "asdcli" / "assets" / "prompts"
runner = CliRunner()

# Split sizes as published (distinct prompts: DL17k's train split repeats 3,690 of its 17,241 entries).
SPLIT_SIZES = {"magic3d_15": (15, 15, 15), "dreamfusion_415": (415, 16, 415), "att3d_2520": (2520, 56, 2520),
               "instant3d_17000": (13551, 100, 100)}
# recipe → (library name, train prompts, paper parameter count, the parts it counts); ASD paper / reference.
PAPER_RECIPES = {
    "sd_hyper_ingp_mg15": ("magic3d_15", 15, 13.3e6, ("generator", "background")),
    "sd_3dconv_df415": ("dreamfusion_415", 415, 88.7e6, ("generator",)),
    "sd_3dconv_at2520": ("att3d_2520", 2520, 88.7e6, ("generator",)),
    "mvdream_triplane": ("instant3d_17000", 13551, 120.6e6, ("generator",)),
}


@pytest.mark.parametrize("name", PAPER_LIBRARIES)
def test_bundled_library_keeps_its_splits_without_warnings(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the known DL17k repeats are documented, not warned about
        lib = read_library(name)
    assert tuple(len(lib[s]) for s in ("train", "val", "test")) == SPLIT_SIZES[name]
    raw = json.loads(gzip.decompress((ASSETS / f"{name}.json.gz").read_bytes()))
    assert set(raw) == {"train", "val", "test"}
    assert lib["val"] == list(dict.fromkeys(" ".join(p.split()) for p in raw["val"]))  # order kept
    assert read_split(name, "test") == lib["test"]


def test_attribution_names_the_source_licence_and_every_upstream_file():
    text = (ASSETS / "ATTRIBUTION.md").read_text(encoding="utf-8")
    assert "ScaleDreamer" in text and "Apache License 2.0" in text
    for name in PAPER_LIBRARIES:
        assert f"load/{name}_prompt_library.json" in text and f"`{name}`" in text
    shipped = {p.name for p in ASSETS.iterdir()}
    assert shipped == {f"{n}.json.gz" for n in PAPER_LIBRARIES} | {"ATTRIBUTION.md"}
    assert sum((ASSETS / f"{n}.json.gz").stat().st_size for n in PAPER_LIBRARIES) < 400_000  # gzipped: ~235 kB


def test_a_local_file_still_wins_over_nothing_and_a_stale_path_names_the_bundled_library(tmp_path, monkeypatch):
    own = tmp_path / "magic3d_15.json"
    own.write_text(json.dumps({"train": ["a red cube"], "val": ["a red cube"], "test": ["a red cube"]}))
    assert read_library(own)["train"] == ["a red cube"]  # a path is read as a path, not as the bundled name
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UserError) as info:
        read_library("prompts/magic3d_15.json")  # what the recipes used to say
    assert "the bundled library is named magic3d_15" in str(info.value)


@pytest.mark.parametrize("recipe", sorted(PAPER_RECIPES))
def test_paper_recipe_dry_run_works_from_any_directory(recipe, tmp_path, monkeypatch):
    library, train, paper, parts = PAPER_RECIPES[recipe]
    monkeypatch.chdir(tmp_path)  # nothing beside the user: the library must come from the package
    res = runner.invoke(app, ["train", str(ROOT / "recipes" / f"{recipe}.yaml"), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["recipe"]["prompts"]["library"] == library and report["num_prompts"] == train
    n = sum(report["parameters"][p] for p in parts)
    assert abs(n - paper) / paper < 0.01, report["parameters"]  # the paper quotes one decimal of millions


def test_cp100k_dry_run_reports_the_wide_net_and_why_prompts_are_missing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["train", str(ROOT / "recipes" / "sd_3dconv_cp100k.yaml"), "--dry-run", "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert abs(report["parameters"]["generator"] - 144.8e6) / 144.8e6 < 0.01
    assert report["num_prompts"] is None and "prompts.library=PATH" in report["prompts_note"]


def test_cp100k_training_stops_with_one_line_on_how_to_build_the_library(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the library is checked first, whatever the weights
    res = runner.invoke(app, ["train", str(ROOT / "recipes" / "sd_3dconv_cp100k.yaml")])
    assert res.exit_code == 2
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: prompts.library: cap3d_100k")
    assert '{"train": [...], "val": [...], "test": [...]}' in lines[0] and "one prompt a line" in lines[0]
    assert "prompts.library=PATH" in lines[0]
    assert not (tmp_path / "runs").exists()


def _project_text_files():
    yield ROOT / "README.md"
    for folder, pattern in (("recipes", "*.yaml"), ("docs", "*.md"), ("asdcli", "*")):
        for path in sorted((ROOT / folder).rglob(pattern)):
            if path.is_file() and path.suffix in (".py", ".yaml", ".yml", ".md", ".txt", ".json", ".toml"):
                yield path


def test_nothing_in_the_project_points_outside_it():
    outside = re.compile(r"shared/|this workspace")
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _project_text_files()
            for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1)
            if outside.search(line)]
    assert hits == []
    assert len(list(_project_text_files())) > 50  # the scan really reads the package, recipes and docs
