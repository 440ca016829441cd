"""Shared test setup: deterministic, single-threaded CPU torch (CI has 2 cores; tests must stay small)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# The CLI's default thread count follows the machine's load; tests pin it so runs compare bit-for-bit.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _torch_single_thread():
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a hard dependency
        yield
        return
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="session")
def load_bench():
    """load_bench("name") → bench/name.py as a module, "probes/name" → bench/probes/name.py (the bench scripts are
    not a package)."""
    import importlib.util
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "bench"

    def load(name: str):
        spec = importlib.util.spec_from_file_location(Path(name).name, bench / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
