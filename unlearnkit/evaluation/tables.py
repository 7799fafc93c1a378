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
    with_train = any(r.get("train") for r in results.values())  # evaluate(on="both"): the training prompts beside
    if with_train:
        cols.insert(5, ("LPIPS_ret train prompts", "train_lpips_ret", "{:.3f}"))
    lines = ["| method | " + " | ".join(c for c, _, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    csv = ["method," + ",".join(k for _, k, _ in cols) + ",lpips_ret_lo,lpips_ret_hi"
           + (",train_lpips_ret_lo,train_lpips_ret_hi" if with_train else "")]
    for method, r in results.items():
        train = r.get("train") or {}
        r = {**dict(r), **({"train_lpips_ret": train["lpips_ret"], "train_lpips_ret_ci": train["lpips_ret_ci"]}
                           if train else {})}
        cells = []
        for _, key, fmt in cols:
            v = r.get(key)
            cell = "—" if v is None else fmt.format(v)
            if key in ("lpips_ret", "lpips_neighbour", "lpips_rest", "train_lpips_ret") and v is not None:
                cell = format_ci(v, r[key + "_ci"])
            if key == "integrity" and v is not None:
                lo, hi = r["lpips_ret_ci"]
                cell += f" [{1 - hi:.3f}, {1 - lo:.3f}]"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
        csv.append(method + "," + ",".join("" if r.get(k) is None else f"{r[k]:.6g}" for _, k, _ in cols)
                   + ",{:.6g},{:.6g}".format(*r["lpips_ret_ci"])
                   + (",{:.6g},{:.6g}".format(*r["train_lpips_ret_ci"]) if train else ",," if with_train else ""))
    first = next(iter(results.values())) if results else {}
    net, on = first.get("lpips_net", "?"), first.get("on", "all")
    part = {"eval": "the held-out retain prompts (no method trained on them)", "train": "the training retain prompts",
            "all": "every retain prompt"}.get(on, on)
    md = "\n".join(lines) + (f"\n\nLPIPS network: {net}. Retain columns on {part}"
                             + ("; *LPIPS_ret train prompts* on the ones the methods trained on" if with_train else "")
                             + ". Intervals: 95% bootstrap over prompts × seeds; rates: Wilson.\n")
    if path:
        path = Path(path)
        atomic_write(path.with_suffix(".md"), lambda t: Path(t).write_text(md))
        atomic_write(path.with_suffix(".csv"), lambda t: Path(t).write_text("\n".join(csv) + "\n"))
    return md
