"""The executed notebooks show their figures: papermill runs a notebook on the smoke profile, as `reproduce` does,
and every figure must be in the executed copy as an image/png output of the cell that draws it. nbmake only checks
that the cells ran, which they also did while a backend switch in the library kept every figure off the page."""

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# notebook -> {text that identifies a code cell: the number of images it shows}; no other cell shows one
EXPECTED = {
    "00_quickstart": {"comparison_grid(": 1},
    "03_gradient_ascent": {"loss_curves(": 1, "training_data(base": 1, "retain_spread(": 1,
                           "quantities.snapshot_images(": 2},
    "04_esd": {"loss_curves(": 1, "retain_spread(": 1, "quantities.esd_panel(": 2, "comparison_grid(": 1,
               "run_u = run_method(": 1, "quantities.snapshot_images(": 1, "esd_sliders(": 1},
}


def _outputs_text(output) -> str:
    text = output.get("text", "")
    text = "".join(text) if isinstance(text, list) else text
    for value in output.get("data", {}).values():
        if isinstance(value, (str, list)):
            text += "".join(value) if isinstance(value, list) else value
    return text + "".join(output.get("traceback", []))


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    # one cache for the notebooks of this file: the second reuses the base images the first generated
    return tmp_path_factory.mktemp("cache")


# slow: papermill runs these notebooks again after nbmake has (minutes); .ci/run's slow pass runs it
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(EXPECTED))
@pytest.mark.parametrize("static", [True, False], ids=["static", "plain-papermill"])
def test_executed_notebook_holds_its_figures_as_images(name, static, tmp_path, monkeypatch, shared_cache):
    # plain papermill: no UNLEARNKIT_STATIC, so the explorer and the sliders take their kernel path, and still the
    # figure they draw is saved (an ordinary output the controls update in place)
    import papermill as pm

    if static:
        monkeypatch.setenv("UNLEARNKIT_STATIC", "1")
    else:
        monkeypatch.delenv("UNLEARNKIT_STATIC", raising=False)
    monkeypatch.setenv("UNLEARNKIT_PROFILE", "smoke")
    monkeypatch.setenv("UNLEARNKIT_CACHE", str(shared_cache))
    # the kernel inherits the environment: make it import this checkout's package
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own default (inline), as in JupyterLab
    target = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(str(ROOT / "notebooks" / f"{name}.ipynb"), str(target), cwd=str(ROOT / "notebooks"),
                        kernel_name="python3", progress_bar=False, parameters={"figures_dir": str(tmp_path)})
    book = json.loads(target.read_text())
    found = {}
    for cell in (c for c in book["cells"] if c["cell_type"] == "code"):
        source = "".join(cell["source"])
        images = sum("image/png" in o.get("data", {}) for o in cell["outputs"])
        marker = next((m for m in EXPECTED[name] if m in source), None)
        if marker:
            found[marker] = images
        else:
            assert images == 0, f"an image in a cell that draws none: {source[:80]!r}"
        for output in cell["outputs"]:
            text = _outputs_text(output)
            assert "TqdmWarning" not in text and "IProgress" not in text, f"tqdm fell back to text: {text[:200]!r}"
            # a progress bar belongs in a widget, not in dozens of stderr lines
            assert not (output.get("name") == "stderr" and "it/s]" in text), f"a text progress bar: {text[:200]!r}"
    assert found == EXPECTED[name]
