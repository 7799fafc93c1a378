"""Table 1: methods × metrics as Markdown and CSV."""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write
from .stats import format_ci


def results_table(results: dict[str, dict], path: str | Path | None = None) -> str:
    """Table 1: methods × metrics as Markdown (returned); with `path`, also writes `path`.md and `path`.csv."""
    cols = [("FID (clf)", "fid", "{:.2f}"), ("accuracy", "retain_accuracy", "{:.3f}"),
            ("forget rate", "forget_rate", "{:.3f}"), ("LPIPS_ret", "lpips_ret", "{:.3f}"),
            ("I", "integrity", "{:.3f}"), ("LPIPS_ret neighbour", "lpips_neighbour", "{:.3f}"),
            ("LPIPS_ret rest", "lpips_rest", "{:.3f}"), ("LPIPS_forget", "lpips_forget", "{:.3f}")]
    lines = ["| method | " + " | ".join(c for c, _, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    csv = ["method," + ",".join(k for _, k, _ in cols) + ",lpips_ret_lo,lpips_ret_hi"]
    for method, r in results.items():
        cells = []
        for _, key, fmt in cols:
            v = r.get(key)
            cell = "—" if v is None else fmt.format(v)
            if key in ("lpips_ret", "lpips_neighbour", "lpips_rest") and v is not None:
                cell = format_ci(v, r[key + "_ci"])
            if key == "integrity" and v is not None:
                lo, hi = r["lpips_ret_ci"]
                cell += f" [{1 - hi:.3f}, {1 - lo:.3f}]"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
        csv.append(method + "," + ",".join("" if r.get(k) is None else f"{r[k]:.6g}" for _, k, _ in cols)
                   + ",{:.6g},{:.6g}".format(*r["lpips_ret_ci"]))
    net = next(iter(results.values())).get("lpips_net", "?") if results else "?"
    md = "\n".join(lines) + f"\n\nLPIPS network: {net}. Intervals: 95% bootstrap over prompts × seeds.\n"
    if path:
        path = Path(path)
        atomic_write(path.with_suffix(".md"), lambda t: Path(t).write_text(md))
        atomic_write(path.with_suffix(".csv"), lambda t: Path(t).write_text("\n".join(csv) + "\n"))
    return md
