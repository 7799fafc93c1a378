import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# explore() and the sliders draw static figures in the notebooks nbmake runs (kernels inherit this environment)
os.environ.setdefault("UNLEARNKIT_STATIC", "1")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    # every test gets its own empty cache: no test can pass because an earlier one filled it
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def tiny_pipe():
    from unlearnkit.models import build_pipeline

    return build_pipeline("tiny", seed=0)


@pytest.fixture
def object_task():
    # the built-in object task cut to a few prompts: the same structure, seconds instead of minutes
    import unlearnkit as uk

    from dataclasses import replace

    return replace(uk.get_task("object").head(3, 4), name="object-small")

