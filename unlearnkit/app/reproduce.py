"""`unlearnkit reproduce`: run the numbered notebooks through papermill, in order, on one profile."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from tqdm.auto import tqdm


def notebooks_dir() -> Path:
    """The kit's notebooks/ folder (next to the package in a source checkout, or under the working directory)."""
    for candidate in (Path(__file__).resolve().parents[2] / "notebooks", Path.cwd() / "notebooks"):
        if candidate.is_dir():
            return candidate
    raise ValueError("no notebooks/ folder found; run `unlearnkit reproduce` from a checkout of the kit")


# names for --only: the paper's reproduction (notebooks 00-11) and what goes beyond it (12, 13; 14: the baselines
# benchmarks added since)
GROUPS = {"paper": [f"{i:02d}" for i in range(12)], "beyond": ["12", "13", "14"]}


def reproduce(profile: str = "cpu", out_dir: str | Path = "executed", only: str | None = None,
              figures_dir: str | Path | None = None, kernel: str = "python3", notebooks: str | Path | None = None,
              device: str = "auto") -> dict:
    """Execute every notebook NN_*.ipynb with `profile` on `device` ('auto': cuda when there is a GPU); returns {'profile', 'seconds', 'notebooks': {name: s}}.

    `only`: comma-separated notebook name prefixes or group names (`GROUPS`: 'paper' = 00-11, 'beyond' = 12-14).
    Executed copies go to `out_dir`; figures to `figures_dir` (default: the kit's figures/). A failing
    notebook stops the run with a ValueError naming the notebook and the cell.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    from ..experiments import profile as get_profile

    get_profile(profile)  # validates the name before anything runs
    os.environ["UNLEARNKIT_STATIC"] = "1"  # headless: explore() and the sliders draw static figures (unlearnkit.pictures.explorer)
    src = Path(notebooks) if notebooks else notebooks_dir()
    books = sorted(p for p in src.glob("[0-9][0-9]_*.ipynb"))
    if only:
        prefixes = [g for s in only.split(",") if s.strip() for g in GROUPS.get(s.strip(), [s.strip()])]
        books = [b for b in books if any(b.name.startswith(p) for p in prefixes)]
        if not books:
            raise ValueError(f"--only {only!r} matches no notebook in {src}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = Path(figures_dir) if figures_dir else src.parent / "figures"
    timings, start = {}, time.time()
    for book in tqdm(books, desc=f"reproduce ({profile})", unit="notebook"):
        t = time.time()
        target = out_dir / book.name
        try:
            pm.execute_notebook(str(book), str(target), parameters={"profile": profile, "figures_dir": str(figures), "device": device},
                                cwd=str(src), kernel_name=kernel, progress_bar=False)
        except PapermillExecutionError as e:
            raise ValueError(f"notebook {book.name} failed in cell {e.cell_index} (execution count {e.exec_count}): "
                             f"{e.ename}: {e.evalue}. The executed copy with the traceback is {target}") from None
        timings[book.name] = round(time.time() - t, 1)
    result = {"profile": profile, "seconds": round(time.time() - start, 1), "notebooks": timings}
    (out_dir / "timings.json").write_text(json.dumps(result, indent=1))
    return result
