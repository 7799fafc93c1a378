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
    _compact_warnings()
    base = load_base(device=device)
    per_method = f"; per method {P.method_settings}" if P.method_settings else ""
    print(f"profile {P.name}: {P.method_overrides or 'method defaults'}{per_method}; evaluation {P.evaluation}; "
          f"base on {base.device}")
    return P, base, LPIPSDistance().to(base.device)


def _compact_warnings():
    """Warnings in a notebook as one line, 'DidNotForget: esd-x on object did not forget: ...', without the kernel's
    temporary file and line that `warnings` prints by default."""
    import warnings

    warnings.formatwarning = lambda message, category, *args, **kwargs: f"{category.__name__}: {message}\n"


def same_loss(step, by_hand, rtol: float = 1e-4) -> str:
    """One line comparing the loss a method's own step computed (`step`, from `train.first_step`) with `by_hand`,
    the same loss written out from `losses.*`; an AssertionError when they differ by more than `rtol` (the loop
    batches the UNet passes of a step, so the last float digits may differ)."""
    import math

    ours = float(step.loss)
    theirs = float(by_hand.detach()) if hasattr(by_hand, "detach") else float(by_hand)
    if not math.isclose(ours, theirs, rel_tol=rtol, abs_tol=1e-7):
        raise AssertionError(f"the method's step gave {ours:.6g}, the loss written out {theirs:.6g}: they differ")
    return f"the method's own step: {ours:.6g}; written out from losses.*: {theirs:.6g}; equal to {rtol:g} (relative)"


def measured(method: str, figures_dir: str = "../figures", budgets=("cpu",)) -> str:
    """What Table 1 measured for `method` (its display name: 'ESD', 'SA', 'UCE', ...), read from the committed
    tables (figures/table1_<task>[_full].csv, written by notebook 10): one line per task and budget, so a notebook
    quotes the numbers the kit measured instead of typing them."""
    lines = []
    for task in ("object", "style"):
        for budget in budgets:
            path = _table1_path(task, figures_dir, budget)
            if not path.exists():
                continue
            row = next((r for r in _table1(task, figures_dir, budget) if r["method"] == method), None)
            if row is None:
                lines.append(f"{task}, {budget}: {method} is not in {path.name}")
                continue
            lines.append(f"{task}, {budget} ({path.name}): forget rate {float(row['forget_rate']):.2f}, LPIPS_ret "
                         f"{float(row['lpips_ret']):.3f} [{float(row['lpips_ret_lo']):.3f}, "
                         f"{float(row['lpips_ret_hi']):.3f}], retain accuracy {float(row['retain_accuracy']):.3f}")
    return "\n".join(lines) or f"no Table 1 under {figures_dir}: run notebook 10 first"


def _table1_path(task: str, figures_dir: str, budget: str = "cpu"):
    from pathlib import Path

    return Path(figures_dir) / f"table1_{task}{'' if budget == 'cpu' else '_' + budget}.csv"


def _table1(task: str, figures_dir: str, budget: str = "cpu") -> list[dict]:
    """The rows of the committed Table 1 of `task` at `budget` (notebook 10's CSV); [] without it."""
    import csv

    path = _table1_path(task, figures_dir, budget)
    if not path.exists():
        return []
    with path.open() as fh:
        return list(csv.DictReader(fh))


def least_damage(task: str = "object", figures_dir: str = "../figures", budget: str = "cpu"):
    """(display name, LPIPS_ret) of the method with the smallest LPIPS_ret in the committed Table 1 among those
    that forgot (forget rate <= 0.2); None without the table."""
    from ..evaluation import FORGOT_BELOW

    rows = [r for r in _table1(task, figures_dir, budget) if r["method"] != "base"
            and float(r["forget_rate"]) <= FORGOT_BELOW]
    best = min(rows, key=lambda r: float(r["lpips_ret"]), default=None)
    return (best["method"], float(best["lpips_ret"])) if best else None


def saddle_forms(bench_dir: str = "../bench") -> tuple[str, str]:
    """(Markdown table, one sentence) of the sweep over Saddle's constraint forms (`bench/tune.py --methods
    saddle-forms`, rows in bench/tune-{object,style}.json): the sentence says, from the rows, which forms forgot on
    both tasks at every τ tried."""
    import json
    from pathlib import Path

    from ..evaluation import FORGOT_BELOW

    rows = []
    for task in ("object", "style"):
        path = Path(bench_dir) / f"tune-{task}.json"
        for r in json.loads(path.read_text()) if path.exists() else []:
            if r["method"] == "saddle" and "constraint" in r["overrides"]:
                rows.append((r["overrides"]["constraint"], r["overrides"].get("tau_mult", 1.0), task, r))
    if not rows:
        return "", f"no Saddle-form rows under {bench_dir} (run `python bench/tune.py --methods saddle-forms`)"
    table = ["| form | τ × | task | forget rate | LPIPS_ret |", "|---|---|---|---|---|"]
    table += [f"| {form} | {tau:g} | {task} | {r['forget_rate']:.2f} | {r['lpips_ret']:.3f} |"
              for form, tau, task, r in sorted(rows, key=lambda x: (x[0], x[1], x[2]))]
    forms = sorted({f for f, *_ in rows})
    always = [f for f in forms if all(r["forget_rate"] <= FORGOT_BELOW for g, _, _, r in rows if g == f)]
    never = [f for f in forms if not any(r["forget_rate"] <= FORGOT_BELOW for g, _, t, r in rows if g == f
                                         and t == "style")]
    sentence = (f"Forgot at every τ tried, on both tasks: {', '.join(always) or 'no form'}. Never forgot the style: "
                f"{', '.join(never) or 'none'} (forgot: forget rate ≤ {FORGOT_BELOW}).")
    return "\n".join(table), sentence


def number(v) -> str:
    """A value as the notebooks print it: floats to 3 significant digits, the rest as repr."""
    return f"{v:.3g}" if isinstance(v, float) else repr(v)


def trained_config(run) -> str:
    """The config that trained `run`, in one line: the fields that differ from the method's defaults. `run_method`
    set them: the profile's sizes (steps, data), the task's tuned config, any override; and it caches the run."""
    from dataclasses import fields

    from ..methods import make_config

    default = make_config(run.method)
    changed = {f.name: getattr(run.config, f.name) for f in fields(run.config)
               if getattr(run.config, f.name) != getattr(default, f.name)}
    return (f"{run.method} trained with " + (", ".join(f"{k}={number(v)}" for k, v in changed.items()) or "its defaults")
            + (" (every other field at the method's default)" if changed else ""))


def neighbour_verdict(results: dict, forgot_below: float | None = None) -> str:
    """The paper's claim (a), read from `results` ({method: evaluate result}): for which methods that forgot is
    LPIPS_ret on the neighbour's pairs above the rest's, intervals disjoint; a sentence written from the numbers."""
    from ..evaluation import FORGOT_BELOW
    from ..evaluation.claims import who_pays_more

    forgot_below = FORGOT_BELOW if forgot_below is None else forgot_below
    holds, fails, untested = [], [], []
    for name, r in results.items():
        if name == "base" or "lpips_neighbour" not in r:
            continue
        if r.get("forget_rate") is not None and r["forget_rate"] > forgot_below:
            untested.append(name)
            continue
        (holds if who_pays_more(r) == "neighbour" else fails).append(f"{name} ({r['lpips_neighbour']:.3f} vs {r['lpips_rest']:.3f})")
    text = (f"Claim (a), neighbour above the rest with disjoint intervals, holds for {len(holds)} of "
            f"{len(holds) + len(fails)} methods that forgot: " + (", ".join(holds) or "none") + ". ")
    if fails:
        text += "It does not for " + ", ".join(fails) + " (neighbour vs rest). "
    if untested:
        text += "Not testable (did not forget): " + ", ".join(untested) + "."
    return text.strip()


def what_was_drawn(pipes: dict, results: dict, task, prof, forgot_below: float | None = None) -> str:
    """What each method drew, read by the concept classifier, as a Markdown table and one sentence per method:
    what its forget-prompt images show in place of the concept (the most frequent concepts of the task's kind, with
    their share; the evaluation's own images and seeds, from the sample cache), how often its neighbour-prompt images
    still show the neighbour (on the evaluation seeds), and its LPIPS_ret on the neighbour against the rest — with the caveat where a method
    did not forget (its retention numbers then say nothing about the cost of forgetting)."""
    from collections import Counter

    from ..data import cached_sample_pairs
    from ..evaluation import FORGOT_BELOW
    from ..sampling import grid
    from ..evaluation.claims import who_pays_more
    from ..evaluation.classifier import load_classifier

    forgot_below = FORGOT_BELOW if forgot_below is None else forgot_below
    clf = load_classifier()
    f_prompts, f_seeds = grid(task.forget_prompts, prof.forget_seeds, prof.forget_noise)  # evaluate's images
    n_prompts = [task.swap(p, task.neighbour_concept) for p in task.forget_prompts] if task.neighbour_concept else []
    n_pairs = grid(n_prompts, prof.eval_seeds)
    rows, notes, kept_share = [], [], {}
    for name, pipe in pipes.items():
        shown = Counter(p[task.kind] for p in clf.predict(cached_sample_pairs(pipe, f_prompts, f_seeds,
                                                                              prof.sample_steps, prof.guidance_scale)))
        top = ", ".join(f"{c} {k / len(f_prompts):.0%}" for c, k in shown.most_common(3))
        kept = ""
        if n_prompts:
            imgs = cached_sample_pairs(pipe, *n_pairs, prof.sample_steps, prof.guidance_scale)
            kept_share[name] = sum(p[task.kind] == task.neighbour_concept for p in clf.predict(imgs)) / len(imgs)
            kept = f"{kept_share[name]:.0%}"
        r = results.get(name, {})
        near = (f"{r['lpips_neighbour']:.3f} / {r['lpips_rest']:.3f}" if "lpips_neighbour" in r else "—")
        rows.append(f"| {name} | {top} | {kept or '—'} | {near} |")
        if name == "base":
            continue
        rate = r.get("forget_rate")
        if rate is not None and rate > forgot_below:
            notes.append(f"**{name}** did not forget (forget rate {rate:.2f}): its images still show "
                         f"{task.forget_concept}, and its retention numbers say nothing about the cost of forgetting.")
            continue
        instead = next((c for c, _ in shown.most_common() if c != task.forget_concept), None)
        line = f"**{name}** draws {instead or 'nothing the classifier names'} where the base drew {task.forget_concept}"
        if name in kept_share and "base" in kept_share:
            line += (f"; its *{task.neighbour_concept}* prompts show {task.neighbour_concept} in "
                     f"{kept_share[name]:.0%} of images (base {kept_share['base']:.0%})")
        if "lpips_neighbour" in r:
            line += {"neighbour": "; the neighbour pays more than the rest (intervals disjoint)",
                     "rest": "; the rest pays more than the neighbour (intervals disjoint)",
                     None: "; neighbour and rest pay alike (intervals overlap)"}[who_pays_more(r)]
            if who_pays_more(r) != "neighbour" and kept_share.get(name, 1) <= kept_share.get("base", 0) / 2:
                line += (", although the neighbour loses more than half of its images: LPIPS_ret does not single out "
                         "a concept that is no longer drawn")
        notes.append(line + ".")
    head = (f"| model | the *{task.forget_concept}* prompts show ({task.kind}, classifier) | the neighbour's prompts "
            f"still show *{task.neighbour_concept}* | LPIPS_ret neighbour / rest |\n|---|---|---|---|\n")
    return head + "\n".join(rows) + "\n\n" + "\n".join(f"- {n}" for n in notes)
