"""The method study's report: one BENCHMARKS-ready table (mean ± spread over seeds), curves over training, and
a verdict template that lists only the differences the seeds support.

Spread and the call rule: over an arm's seeds, a metric is reported as mean ± half its range. A difference
between two arms is called only when their ranges over seeds do not overlap (every seed of one beats every
seed of the other; with two seeds, |Δ mean| > the sum of the two half-ranges) and each arm has at least two
seeds. Otherwise the report says "no call" and the verdict may not state it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

# (key path in a curve row, column title, higher is better; None: a reference column, never compared)
METRICS = (("train.shape_r@1", "train shape_r@1", True), ("test.shape_r@1", "test shape_r@1", True),
           ("test.iou", "test IoU", True), ("test.iou_blob_baseline", "blob IoU (test)", None),
           ("test.color_error", "test colour err", False),
           ("test.r_at_1", "test CLIP R@1", True), ("test.collapsed", "collapsed (test)", False),
           ("test.diversity", "diversity (test)", True))
MECHANISM = (("ratio", "async / guidance"), ("pcos_asd_csd", "cos(ASD, CSD) params"))
COLORS = {"asd": (214, 39, 40), "sds": (31, 119, 180), "csd": (44, 160, 44), "vsd": (148, 103, 189),
          "sds-cfg100": (23, 190, 207), "asd-eta0": (255, 127, 14), "asd-eta0.2": (140, 86, 75)}
MIN_SEEDS = 2


def get(row: dict, path: str) -> float | None:
    for part in path.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row if isinstance(row, (int, float)) and math.isfinite(row) else None


def stats(values: list[float]) -> dict[str, float] | None:
    """mean, spread (half the range), lo, hi, n over seeds; None without values."""
    if not values:
        return None
    lo, hi = min(values), max(values)
    return {"mean": sum(values) / len(values), "spread": (hi - lo) / 2, "lo": lo, "hi": hi, "n": len(values)}


def call(a: dict | None, b: dict | None, higher_is_better: bool = True) -> str:
    """'better' / 'worse' (a against b) only when the seed ranges do not overlap and both have ≥ 2 seeds;
    else 'no call (…)'."""
    if a is None or b is None:
        return "no call (missing)"
    if a["n"] < MIN_SEEDS or b["n"] < MIN_SEEDS:
        return "no call (one seed)"
    if a["lo"] > b["hi"]:
        return "better" if higher_is_better else "worse"
    if a["hi"] < b["lo"]:
        return "worse" if higher_is_better else "better"
    return "no call (inside the spread)"


def fmt(s: dict | None) -> str:
    if s is None:
        return "–"
    return f"{s['mean']:.3f} ± {s['spread']:.3f}" + ("" if s["n"] >= MIN_SEEDS else " (1 seed)")


def mechanism_summary(rows: list[dict]) -> dict[str, float | None]:
    """Means over a checkpoint's probed timesteps: |async| / |guidance|, cos(ASD, CSD) on the parameters and
    in the prior's space, |SDS residual| / |guidance|."""
    guided = [x for x in rows if x["guidance"] > 0]
    return {"ratio": _mean([x["async"] / x["guidance"] for x in guided]),
            "pcos_asd_csd": _mean([x["pcos_asd_csd"] for x in rows]),
            "cos_asd_csd": _mean([x["cos_asd_csd"] for x in rows]),
            "sds_ratio": _mean([x["sds_residual"] / x["guidance"] for x in guided])}


def load(grid, state: Path) -> dict[str, dict[int, list[dict]]]:
    """config → {step: [curve row of each seed that reached it]}. A step scored twice (a sitting that ended
    between scoring and saving the state retrains that segment) counts once: its last row."""
    out: dict[str, dict[int, list[dict]]] = {}
    for arm in grid:
        rows = {r["step"]: r for r in _rows(state / arm.name / "curve.jsonl")}
        for step, r in sorted(rows.items()):
            out.setdefault(arm.config, {}).setdefault(step, []).append(r)
    return out


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def final_step(curves: dict[int, list[dict]]) -> int | None:
    """The last step every seed of the config reached (the most seeds first)."""
    if not curves:
        return None
    most = max(len(v) for v in curves.values())
    return max(s for s, v in curves.items() if len(v) == most)


def at(curves: dict[int, list[dict]], step: int | None, path: str) -> dict | None:
    rows = curves.get(step, []) if step is not None else []
    return stats([v for v in (get(r, path) for r in rows) if v is not None])


def diverged(grid, state: Path) -> dict[str, int]:
    """config → how many of its seeds diverged (too many non-finite steps in a row: the engine aborted)."""
    out: dict[str, int] = {}
    for arm in grid:
        if any(e.get("diverged") for e in _rows(state / arm.name / "events.jsonl")):
            out[arm.config] = out.get(arm.config, 0) + 1
    return out


def table(grid, data: dict, lost: dict[str, int] | None = None) -> list[str]:
    """Markdown: one row per config at its final step, mean ± spread over seeds (a diverged seed is scored at
    its last finite checkpoint's step and flagged in the seeds column)."""
    head = ["arm", "corpus", "step", "seeds", *[t for _, t, _ in METRICS], *[t for _, t in MECHANISM]]
    lines = ["| " + " | ".join(head) + " |", "|:---|" + "---:|" * (len(head) - 1)]
    for config in dict.fromkeys(a.config for a in grid):
        curves = data.get(config, {})
        step = final_step(curves)
        seeds = str(len(curves.get(step, [])) if step is not None else 0)
        seeds += f" ({(lost or {})[config]} diverged)" if (lost or {}).get(config) else ""
        corpus = config.rsplit("-", 1)[1]
        cells = [fmt(at(curves, step, p)) for p, _, _ in METRICS]
        cells += [fmt(at(curves, step, f"mechanism.{k}")) for k, _ in MECHANISM]
        lines.append("| " + " | ".join([config, corpus, str(step or "–"), seeds, *cells]) + " |")
    return lines


def calls(grid, data: dict) -> list[str]:
    """ASD against each other method per corpus and metric, at their common final step: called or not."""
    lines = []
    corpora = sorted({a.corpus for a in grid})
    for corpus in corpora:
        asd = data.get(f"asd-{corpus}", {})
        for other in [c for c in dict.fromkeys(a.config for a in grid) if c.endswith(f"-{corpus}")
                      and c != f"asd-{corpus}"]:
            theirs = data.get(other, {})
            step = min(final_step(asd) or 0, final_step(theirs) or 0) or None
            for path, title, up in [m for m in METRICS if m[2] is not None]:
                verdict = call(at(asd, step, path), at(theirs, step, path), up)
                lines.append(f"- {corpus} prompts, step {step or '–'}: asd vs {other.rsplit('-', 1)[0]} on "
                             f"{title}: **{verdict}**")
    return lines


def report(grid, state: Path, out: Path) -> int:
    """study.md (table, calls, verdict template), study.json and curves_*.png in `out`. Returns 0."""
    out.mkdir(parents=True, exist_ok=True)
    data = load(grid, state)
    md = ["### Method study (mean ± half the range over seeds, at each arm's last step all its seeds reached)",
          "", *table(grid, data, diverged(grid, state)), "",
          "### Differences (called only where the seed ranges do not overlap)", "",
          *calls(grid, data), "", "### Verdict (two sentences; cite only differences marked better/worse above)",
          "", "To be written from the table above once every arm has run: <ASD vs the others as the corpus "
          "grows>. <What the mechanism figures show: the asynchronous term against the guidance term, "
          "cos(ASD, CSD)>.", ""]
    (out / "study.md").write_text("\n".join(md))
    (out / "study.json").write_text(json.dumps({c: {str(s): rows for s, rows in v.items()}
                                                for c, v in data.items()}, indent=1, default=str) + "\n")
    for path, title, _ in METRICS + tuple((f"mechanism.{k}", t, True) for k, t in MECHANISM):
        curve_plot(out / f"curves_{path.replace('.', '_').replace('@', '')}.png", title, grid, data, path)
    print(f"wrote {out / 'study.md'}, study.json and the curves in {out}")
    return 0


def curve_plot(path: Path, title: str, grid, data: dict, metric: str) -> Path | None:
    """One panel per corpus: the metric over training steps, one line per method (mean over seeds) with its
    seed range shaded. PIL only (the venv has no matplotlib)."""
    from PIL import Image, ImageDraw

    corpora = sorted({a.corpus for a in grid})
    series = {}  # (corpus, config) → [(step, stats)]
    for config, curves in data.items():
        pts = [(s, at(curves, s, metric)) for s in sorted(curves)]
        if any(p[1] for p in pts):
            series[(int(config.rsplit("-", 1)[1]), config)] = [(s, st) for s, st in pts if st]
    if not series:
        return None
    values = [v for pts in series.values() for _, st in pts for v in (st["lo"], st["hi"])]
    steps = [s for pts in series.values() for s, _ in pts]
    y0, y1 = min(0.0, min(values)), max(values) * 1.08 + 1e-9
    pw, ph, left, top, bottom = 300, 260, 50, 30, 40
    img = Image.new("RGB", (left + pw * len(corpora) + 140, top + ph + bottom), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title, fill="black")
    for k, corpus in enumerate(corpora):
        x0 = left + k * pw

        def px(s, x0=x0):
            return x0 + 10 + (s / max(steps)) * (pw - 30)

        def py(v):
            return top + ph - (v - y0) / (y1 - y0) * ph

        d.rectangle([x0, top, x0 + pw - 10, top + ph], outline=(180, 180, 180))
        d.text((x0 + 5, top + ph + 6), f"{corpus} prompts, steps 0-{max(steps)}", fill="black")
        for j in range(5):
            v = y0 + (y1 - y0) * j / 4
            if k == 0:
                d.text((x0 - 45, py(v) - 6), f"{v:.3g}", fill=(90, 90, 90))
            d.line([(x0, py(v)), (x0 + pw - 10, py(v))], fill=(235, 235, 235))
        for (c, config), pts in series.items():
            if c != corpus:
                continue
            color = COLORS.get(config.rsplit("-", 1)[0], (0, 0, 0))
            light = tuple(int(ch + (255 - ch) * 0.75) for ch in color)
            if len(pts) > 1:
                d.polygon([(px(s), py(st["hi"])) for s, st in pts] + [(px(s), py(st["lo"])) for s, st in
                                                                      reversed(pts)], fill=light)
                d.line([(px(s), py(st["mean"])) for s, st in pts], fill=color, width=2)
            for s, st in pts:
                d.ellipse([px(s) - 2, py(st["mean"]) - 2, px(s) + 2, py(st["mean"]) + 2], fill=color)
    for j, name in enumerate(COLORS):
        yy = top + 8 + 16 * j
        d.line([(left + pw * len(corpora) + 5, yy + 6), (left + pw * len(corpora) + 25, yy + 6)],
               fill=COLORS[name], width=3)
        d.text((left + pw * len(corpora) + 30, yy), name, fill="black")
    tmp = path.with_name(f".{path.name}.tmp.png")
    img.save(tmp)
    os.replace(tmp, path)
    return path


def summary(data: dict) -> dict[str, Any]:
    """config → final step and its stats per metric (for scripts)."""
    return {c: {"step": final_step(v), **{p: at(v, final_step(v), p) for p, _, _ in METRICS}}
            for c, v in data.items()}
