import os

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
    import unlearnkit as uk

    return uk.get_task("object")


# a quick sampler / data setting for tests: 2 DDIM steps
FAST = dict(steps=2, batch_size=2, data_steps=2, progress=False)
