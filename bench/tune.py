"""The tuning sweep behind `unlearnkit.experiments.TUNED`: every method gets the same budget of three configs.

    python bench/tune.py [--task style] [--cache runs/cache] [--out bench/tune-style.json]
    python bench/tune.py --forget blue --neighbour green     # a concept of the world: the per-kind rule's sweep
    python bench/tune.py --rule blue,red                     # the kind's rule over those pairs' sweeps
    python bench/tune.py --forget blue --neighbour green --forget-noise per-image   # forget images with their own noise

Each method runs its default and two values of its main knob (the learning rate; Saddle's τ multiple),
on the cpu profile, and is evaluated against the base on the same prompts and seeds. The rule that picks a
config, the same for every method: the lowest lpips_ret among the configs with forget_rate <= 0.2 (else
the lowest forget rate). Results are written as JSON after every run (a rerun skips what is there).
`--forget-noise per-image` judges the forget rate on images that each have their own noise (`sampling.image_seed`)
instead of one noise per seed; its rows sit beside the shared ones (their settings say the noise), and `--rule` with
the same flag picks from them alone. A cached run is not trained again: only its evaluation runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

try:
    import fcntl
except ImportError:  # not on Windows: one sweep per file there
    fcntl = None

import unlearnkit as uk
from unlearnkit import world
from unlearnkit.experiments import profile, run_method
from unlearnkit.methods import make_config, method_code_hash
from unlearnkit.evaluation import FORGOT_BELOW, LPIPSDistance, format_ci
from unlearnkit.sampling import NOISE

GRID = {
    "esd-x": [{}, {"lr": 1e-4}, {"lr": 1e-3}],
    "salun": [{}, {"lr": 3e-5}, {"lr": 3e-4}],
    "sa": [{}, {"lr": 3e-5}, {"lr": 3e-4}],
    "uce": [{}, {"lamb": 0.1}, {"erase_scale": 3.0}],  # a closed form: its knobs are how hard it stays and erases
    "ca": [{}, {"lr": 3e-4}, {"lr": 3e-3}],
    "ca-noise": [{}, {"lr": 3e-4}, {"lr": 3e-3}],
    "fmn": [{}, {"lr": 1e-5}, {"lr": 1e-4}],
    "saddle": [{"constraint": "forget-loss", "tau_mult": m} for m in (2.0, 5.0, 10.0)],
    "ovw": [{}, {"lr": 3e-5}, {"lr": 3e-4}],
}


# Saddle's constraint forms (methods/saddle.py), each with the same budget of three τ multiples; run with
# `--methods saddle-forms` on both tasks, `pick_form` chooses the default form from those rows.
SADDLE_FORMS = {
    "forget-loss": (2.0, 5.0, 10.0),  # τ = m × L_F(θ0): the loss on the forget data must rise
    "overwrite": (0.1, 0.25, 0.5),  # τ = m × L_ovw(θ0): the forget prompt must come within m of the anchor
    "esd": (0.1, 0.25, 0.5),  # τ = m × L_ESD(θ0): ESD's regression must fall to m of where it starts
}
GRID["saddle-forms"] = [{"constraint": c, "tau_mult": m} for c, ms in SADDLE_FORMS.items() for m in ms]


# The sweep behind a kind's rule (`experiments.KIND_RULES`), run on two pairs of the kind (`--rule` picks over both)
# and checked on a third (`bench/claims.py`): concepts of that kind are harder to forget, so the knob goes up, never
# down: each method's default and 3x and 10x its learning rate, for every kind. (Until 2026-12-06 the colours' ESD-x
# knob was its negative-guidance scale η, because the kit's earlier ESD-x did not forget red at any learning rate;
# the authors' ESD-x forgets no colour at any η (1.00 on blue and red at η 1, 3, 10) and forgets both at 3x its lr:
# bench/tune-{blue,red}.json keep the η rows, unpicked.)
_LR_LADDER = {m: [{}, {"lr": 3 * make_config(m).lr}, {"lr": 10 * make_config(m).lr}]
              for m in ("esd-x", "salun", "sa", "saddle", "ovw")}
KIND_GRIDS = {"object": _LR_LADDER, "style": _LR_LADDER, "colour": _LR_LADDER}


def append_row(out: Path, row: dict) -> list[dict]:
    """`row` appended to the JSON list at `out` as it is on disk now, not as this sweep read it: two sweeps on one file
    (say shared and per-image forget noise) keep each other's rows. Under a lock on the folder, written to a temp file
    and renamed. Returns the rows on disk."""
    fd = os.open(out.parent, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        rows = json.loads(out.read_text()) if out.exists() else []
        rows.append(row)
        tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(rows, indent=1))
        os.replace(tmp, out)
        return rows
    finally:
        os.close(fd)  # releases the lock


def pick(rows: list[dict]) -> dict:
    """The rule: lowest lpips_ret among configs that forget (forget_rate <= 0.2), else the lowest forget rate."""
    ok = [r for r in rows if r["forget_rate"] <= FORGOT_BELOW]
    return min(ok, key=lambda r: r["lpips_ret"]) if ok else min(rows, key=lambda r: (r["forget_rate"], r["lpips_ret"]))


def pick_rule(by_pair: dict[str, list[dict]], grid: dict) -> dict[str, dict | None]:
    """A kind's rule from the sweeps of several pairs: per method, among its grid configs run on every pair, those
    that forget on every pair, the lowest mean lpips_ret (each config's newest row per pair); where none does, the lowest worst-pair forget rate (as
    `pick` falls back), marked "forgets": False. Returns {method: {"overrides", "forgets", "rows": {pair: row}}}
    (None for a method with no config run on every pair)."""
    out = {}
    for m, cfgs in grid.items():
        cands = []
        for cfg in cfgs:
            # the newest row of that config: a sweep run again (another version of the method) appends its rows
            rows = {p: next((r for r in reversed(rs) if r["method"] == m and r["overrides"] == cfg), None)
                    for p, rs in by_pair.items()}
            if all(rows.values()):
                cands.append({"overrides": cfg, "rows": rows,
                              "forgets": all(r["forget_rate"] <= FORGOT_BELOW for r in rows.values())})
        ok = [c for c in cands if c["forgets"]]
        if ok:
            out[m] = min(ok, key=lambda c: sum(r["lpips_ret"] for r in c["rows"].values()))
        else:
            out[m] = min(cands, key=lambda c: max(r["forget_rate"] for r in c["rows"].values())) if cands else None
    return out


def pick_form(by_task: dict[str, list[dict]]) -> tuple[str | None, dict]:
    """The constraint form Saddle defaults to: among the forms whose pick (the rule above, over its three τ)
    forgets on every task, the one with the lowest mean lpips_ret; None when no form forgets everywhere.
    Returns (form, {task: picked row of each form})."""
    picks = {}
    for form in SADDLE_FORMS:
        picks[form] = {t: pick(rs) for t, rows in by_task.items()
                       if (rs := [r for r in rows if r["method"] == "saddle" and r["overrides"].get("constraint") == form])}
    ok = {f: p for f, p in picks.items() if len(p) == len(by_task) and all(r["forget_rate"] <= 0.2 for r in p.values())}
    best = min(ok, key=lambda f: sum(r["lpips_ret"] for r in ok[f].values()) / len(ok[f])) if ok else None
    return best, picks


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="style")
    ap.add_argument("--cache", default=None, help="the cache folder of runs and samples (default: unlearnkit's)")
    ap.add_argument("--out", default=None, help="JSON results (default bench/tune-<task>.json)")
    ap.add_argument("--methods", default=None, help=f"comma-separated, of: {', '.join(GRID)} (default: all but saddle-forms)")
    ap.add_argument("--forget", default=None, help="sweep its kind's grid (KIND_GRIDS) on the world's task forgetting this word instead")
    ap.add_argument("--neighbour", default=None, help="with --forget: the concept to watch")
    ap.add_argument("--rule", default=None, help="comma-separated words whose bench/tune-WORD.json sweeps exist: "
                    "print the kind's rule picked over all of them, then stop")
    ap.add_argument("--forget-noise", default="shared", choices=NOISE,
                    help="the forget images' noise: one per seed (shared, the profile's) or one per image (per-image)")
    args = ap.parse_args(argv)
    if args.rule:
        return print_rule(args.rule.split(","), args.forget_noise)
    grid = KIND_GRIDS[world.kind_of(args.forget)] if args.forget else GRID
    args.methods = args.methods or ",".join(m for m in grid if m != "saddle-forms")
    out = Path(args.out or f"bench/tune-{args.forget or args.task}.json")
    rows = json.loads(out.read_text()) if out.exists() else []
    P = dataclasses.replace(profile("cpu"), forget_noise=args.forget_noise)
    setting = sweep_setting(P)
    base = uk.load_base(device="cpu")
    task = (P.trim(world.task(args.forget, neighbour=args.neighbour, name=f"pair-{args.forget}-{args.neighbour}"))
            if args.forget else P.task(args.task))
    lpips = LPIPSDistance()
    for name in args.methods.split(","):
        if name not in grid:
            raise SystemExit(f"--methods: unknown {name!r}; choose from {', '.join(grid)}")
        m = "saddle" if name == "saddle-forms" else name
        code = method_code_hash(m)  # a row measured another version of the method: run again
        for cfg in grid[name]:
            if any(r["method"] == m and r["overrides"] == cfg and r.get("profile") == setting and r.get("code") == code
                   for r in rows):
                continue
            t = time.time()
            run = run_method(base, task, m, P, cache_dir=args.cache, progress=False, use_tuned=False, **cfg)
            r = uk.evaluate(base, run.pipeline, task, lpips=lpips, cache_dir=args.cache, progress=False, **P.evaluation)
            row = {"method": m, "overrides": cfg, "profile": setting, "code": code, "forget_rate": r["forget_rate"], "lpips_ret": r["lpips_ret"],
                   "lpips_ret_ci": r["lpips_ret_ci"], "retain_accuracy": r["retain_accuracy"],
                   "train_seconds": run.seconds, "seconds": time.time() - t}
            rows = append_row(out, row)  # with what another sweep on this file wrote meanwhile
            print(json.dumps(row), flush=True)
    print("| method | config | forget rate | lpips_ret [95% CI] | retain acc | picked |\n|---|---|---|---|---|---|")
    for m in (g for g in grid if g != "saddle-forms"):
        # rows of another version of the method (or from before rows kept its code) stay in the JSON, unpicked
        mine = [r for r in current_rows(rows, args.forget_noise) if r["method"] == m]
        if args.forget:  # rows of an earlier grid stay in the JSON, but the pick is made within today's grid
            mine = [r for r in mine if r["overrides"] in grid[m]]
        if not mine:
            continue
        if m == "saddle" and not args.forget:  # the pick is made within the default constraint form (`pick_form`)
            from unlearnkit.methods.saddle import SaddleConfig
            form = SaddleConfig().constraint
            best = pick([r for r in mine if r["overrides"].get("constraint", "forget-loss") == form])
        else:
            best = pick(mine)
        for r in mine:
            print(f"| {m} | {r['overrides'] or 'default'} | {r['forget_rate']:.2f} | {format_ci(r['lpips_ret'], r['lpips_ret_ci'])} "
                  f"| {r['retain_accuracy']:.3f} | {'**yes**' if r is best else ''} |")

    if args.forget:
        return
    both = {t: json.loads(Path(f"bench/tune-{t}.json").read_text()) for t in ("object", "style")
            if Path(f"bench/tune-{t}.json").exists()}
    form, picks = pick_form({t: [r for r in rows if r.get("profile") == setting] for t, rows in both.items()})
    print(f"\nSaddle's constraint forms (pick per task, lpips_ret / forget rate); default by the rule: {form}")
    for f, p in picks.items():
        print(f"| {f} | " + " | ".join(f"{t}: {r['overrides'].get('tau_mult')}× → {r['lpips_ret']:.4f} / {r['forget_rate']:.2f}"
                                       for t, r in p.items()) + " |")


def sweep_setting(P) -> dict:
    """What a sweep row depends on besides the method's config and code: the profile's method overrides, evaluation
    settings (the forget noise among them, said only when per-image) and method settings. A changed profile runs
    the rows again."""
    setting = {"method_overrides": P.method_overrides, **P.evaluation}
    if P.method_settings:
        setting["method_settings"] = P.method_settings
    return setting


def current_rows(rows: list[dict], noise: str = "shared") -> list[dict]:
    """The rows measured with today's code of their method and today's cpu profile, judged with `noise`: rows of an
    earlier version (or an earlier profile) stay in the JSON but no rule reads them."""
    setting = sweep_setting(dataclasses.replace(profile("cpu"), forget_noise=noise))
    codes = {m: method_code_hash(m) for m in {r["method"] for r in rows}}  # once per method, not per row
    return [r for r in rows if r.get("profile") == setting and r.get("code") == codes[r["method"]]]


def print_rule(words: list[str], noise: str = "shared") -> None:
    by_pair = {}
    for w in words:
        path = Path(f"bench/tune-{w}.json")
        if not path.exists():
            raise SystemExit(f"--rule: {path} does not exist; run bench/tune.py --forget {w} --neighbour WORD first")
        by_pair[w] = current_rows(json.loads(path.read_text()), noise)
    print(f"forget images' noise: {noise}")
    kinds = {world.kind_of(w) for w in words}
    if len(kinds) != 1:
        raise SystemExit(f"--rule: {', '.join(words)} are not of one kind ({', '.join(sorted(kinds))}); a rule is per kind")
    print("| method | rule | " + " | ".join(f"{w}: lpips_ret / forget rate" for w in words) + " |")
    print("|---|---|" + "---|" * len(words))
    for m, c in pick_rule(by_pair, KIND_GRIDS[kinds.pop()]).items():
        if c is None:
            print(f"| {m} | not run on every pair | " + " | ".join("" for _ in words) + " |")
            continue
        print(f"| {m} | {c['overrides'] or 'default'}{'' if c['forgets'] else ' (does not forget every pair: the lowest worst-pair forget rate)'} | " + " | ".join(
            f"{format_ci(r['lpips_ret'], r['lpips_ret_ci'])} / {r['forget_rate']:.2f}" for r in c["rows"].values()) + " |")


if __name__ == "__main__":
    sys.exit(main())
