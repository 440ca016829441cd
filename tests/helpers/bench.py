"""Loading bench/ scripts in tests: the bench scripts are not a package, so each is loaded from its file."""

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench(name: str):
    """load_bench("name") → bench/name.py as a module, "probes/name" → bench/probes/name.py."""
    spec = importlib.util.spec_from_file_location(Path(name).name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
