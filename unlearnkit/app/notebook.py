"""The one setup call at the top of every notebook: `P, base, lpips = setup(profile, device)`."""

from __future__ import annotations

import os

from ..experiments.profiles import Profile
from ..experiments.profiles import profile as get_profile


def profile(name: str = "cpu") -> Profile:
    """The named profile; $UNLEARNKIT_PROFILE overrides it (the tests run every notebook on 'smoke')."""
    return get_profile(os.environ.get("UNLEARNKIT_PROFILE", name))


def setup(profile_name: str = "cpu", device: str = "auto"):
    """(P, base, lpips): the profile, the shipped base model on `device` ('auto': cuda if there is a GPU),
    and the LPIPS distance of the retention metric (shift-tolerant LPIPS, offline)."""
    from ..evaluation.lpips import LPIPSDistance
    from ..models import load_base

    P = profile(profile_name)
    base = load_base(device=device)
    per_method = f"; per method {P.method_settings}" if P.method_settings else ""
    print(f"profile {P.name}: {P.method_overrides or 'method defaults'}{per_method}; evaluation {P.evaluation}; "
          f"base on {base.device}")
    return P, base, LPIPSDistance().to(base.device)


def measured(method: str, figures_dir: str = "../figures", budgets=("cpu",)) -> str:
    """What Table 1 measured for `method` (its display name: 'ESD', 'SA', 'UCE', ...), read from the committed
    tables (figures/table1_<task>[_full].csv, written by notebook 10): one line per task and budget, so a notebook
    quotes the numbers the kit measured instead of typing them."""
    import csv
    from pathlib import Path

    lines = []
    for task in ("object", "style"):
        for budget in budgets:
            path = Path(figures_dir) / f"table1_{task}{'' if budget == 'cpu' else '_' + budget}.csv"
            if not path.exists():
                continue
            with path.open() as fh:
                row = next((r for r in csv.DictReader(fh) if r["method"] == method), None)
            if row is None:
                lines.append(f"{task}, {budget}: {method} is not in {path.name}")
                continue
            lines.append(f"{task}, {budget} ({path.name}): forget rate {float(row['forget_rate']):.2f}, LPIPS_ret "
                         f"{float(row['lpips_ret']):.3f} [{float(row['lpips_ret_lo']):.3f}, "
                         f"{float(row['lpips_ret_hi']):.3f}], retain accuracy {float(row['retain_accuracy']):.3f}")
    return "\n".join(lines) or f"no Table 1 under {figures_dir}: run notebook 10 first"
