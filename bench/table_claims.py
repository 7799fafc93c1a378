"""The paper's claims judged from a Table 1 Markdown file the kit wrote (`figures/table1_object_full.md`, ...), with
the same rules as notebook 10's cell (`unlearnkit.evaluation.claims.claims`): for reading a committed table
without its runs, or when the executed notebook that printed them is gone.

    python bench/table_claims.py figures/table1_object_full.md figures/table1_style_full.md

The table keeps the held-out prompts' neighbour / rest split but only LPIPS_ret for the training prompts, so claim
(a) is judged on the held-out prompts only (the training column says "not in the table").
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from unlearnkit.evaluation.claims import claims

CI = re.compile(r"^\s*(-?[\d.]+)\s*\[\s*(-?[\d.]+),\s*(-?[\d.]+)\s*\]\s*$")
COLUMNS = {"forget rate": "forget_rate", "LPIPS_ret": "lpips_ret", "LPIPS_ret neighbour": "lpips_neighbour",
           "LPIPS_ret rest": "lpips_rest", "LPIPS_ret train prompts": "train_lpips_ret"}


def cell(text: str):
    """'0.023 [0.020, 0.027]' -> (0.023, (0.020, 0.027)); '0.900' -> 0.9; '—' (not measured) -> None."""
    if text in ("—", ""):
        return None
    m = CI.match(text)
    return (float(m[1]), (float(m[2]), float(m[3]))) if m else float(text)


def parse(ap: argparse.ArgumentParser, path: Path) -> dict:
    """{method: evaluate-like dict} from the table's first Markdown table, or one error naming the file."""
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln.startswith("|")]
    except OSError as e:
        ap.error(f"{path}: cannot read it ({e.__class__.__name__}); pass a table1_*.md the kit wrote under figures/")
    if len(lines) < 3:
        ap.error(f"{path}: no Markdown table in it; pass a table1_*.md the kit wrote under figures/")
    head = [h.strip() for h in lines[0].strip("|").split("|")]
    missing = [c for c in ("method", "forget rate", "LPIPS_ret") if c not in head]
    if missing:
        ap.error(f"{path}: its table has no column {', '.join(missing)}; pass a table1_*.md the kit wrote")
    out = {}
    for ln in lines[2:]:
        row = dict(zip(head, (c.strip() for c in ln.strip("|").split("|"))))
        if row.get("method", "").startswith("#"):  # the next table of a table1.md begins
            break
        r = {}
        for col, key in COLUMNS.items():
            if col in row and (v := cell(row[col])) is not None:
                r[key], r[key + "_ci"] = v if isinstance(v, tuple) else (v, None)
        out[row["method"]] = r
    return out


def judged(results: dict) -> list[tuple[str, str, bool | None, bool | None, str]]:
    """[(claim, method, held-out verdict, training verdict, held-out numbers)]."""
    train = {}
    if all("train_lpips_ret" in r for r in results.values()):  # the same rows with the training prompts' LPIPS_ret
        on_train = {m: {**r, "lpips_ret": r["train_lpips_ret"], "lpips_ret_ci": r["train_lpips_ret_ci"]}
                    for m, r in results.items()}
        train = {(c, w): h for c, w, h, _ in claims(on_train) if not c.startswith("(a)")}
    return [(c, w, h, train.get((c, w), "n/a"), nums)
            for c, w, h, nums in claims(results) if not c.startswith("forgets") and w != "base"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tables", nargs="+", type=Path, help="table1_*.md files the kit wrote")
    args = ap.parse_args(argv)
    word = {True: "holds", False: "does not hold", None: "not testable", "n/a": "not in the table"}
    for path in args.tables:
        results = parse(ap, path)
        print(f"**{path.name}**\n\n| claim | method | held-out prompts | training prompts | numbers (held out) |\n"
              "|---|---|---|---|---|")
        for c, w, h, t, nums in judged(results):
            print(f"| {c} | {w} | {word[h]} | {word[t]} | {nums} |")
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
