"""bench/results/*.json → bench/results/REPORT.md: the machine and every table in Markdown, ready for BENCHMARKS.md.

    python bench/report.py [--gpu]
"""

from __future__ import annotations

import argparse
import json

import common

ORDER = ("engine", "corpus", "amortization", "generate", "generators", "losses", "text_cache")


def markdown_table(tab: dict) -> str:
    head = "| " + " | ".join(tab["header"]) + " |"
    rule = "|" + "|".join(":---" if i == 0 else "---:" for i in range(len(tab["header"]))) + "|"
    body = ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in tab["rows"]]
    return "\n".join([f"**{tab['title']}**", "", head, rule, *body])


def machine_line(m: dict) -> str:
    load = ", ".join(f"{x:.2f}" for x in m["loadavg"])
    gpu = f", GPU {m['gpu']}" if m.get("gpu") else ""
    return (f"{m['date']}: {m['cpu']}, {m['nproc']} cores (shared), torch {m['torch']}, python {m['python']}, "
            f"{m['torch_threads']} torch thread(s){gpu}, load average {load}")


def write(gpu: bool = False) -> str:
    suffix = "_gpu" if gpu else ""
    parts = ["# bench/ results", ""]
    for name in ORDER:
        path = common.RESULTS / f"{name}{suffix}.json"
        if not path.is_file():
            continue
        data = json.loads(path.read_text(encoding="utf-8"))
        parts += [f"## {name}", "", f"Measured {machine_line(data['machine'])}.", ""]
        for tab in data.get("tables", []):
            if isinstance(tab, dict):
                parts += [markdown_table(tab), ""]
        if data.get("not_available"):
            parts += [f"IoU-matched amortization: not available: {data['not_available']}", ""]
    text = "\n".join(parts)
    out = common.RESULTS / f"REPORT{suffix}.md"
    out.write_text(text, encoding="utf-8")
    print(f"wrote {out}")
    return text


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gpu", action="store_true", help="report the *_gpu.json results")
    write(ap.parse_args().gpu)
