"""The paper's claims on any concept pair of the embedded world: each printed as holds / fails, with its numbers.

    python bench/claims.py --forget WORD --neighbour WORD [--profile cpu] [--out bench/claims-WORD.json]
                           [--forget-noise per-image]      # writes bench/claims-WORD-per-image.json

Runs the Table-1 methods on the task that forgets WORD and watches its neighbour, each made to forget by
`experiments.run_until_forgotten`: its kind's rule (`experiments.KIND_RULES`; a new pair has no tuned configs)
trained until a check on held-out seeds says forgotten, at a higher learning rate where it does not (OVW w/o L_help
climbs with OVW's checks). Then it evaluates each against the base and checks:
  forgets       the method forgot (forget rate <= 0.2); the claims below count only methods that did
  (a) neighbour the neighbour concept pays most: LPIPS_ret on its prompts above the rest's, intervals disjoint
  (b) help      OVW (and Saddle) keep the model closer to the base than every baseline that forgot (ESD, SalUn, SA)
  (c) L_help    removing L_help from OVW raises LPIPS_ret (intervals disjoint)
Each claim is judged twice: on the held-out retain prompts (no method trained on them; `evaluate`'s default) and on
the training retain prompts (the ones L_help, SalUn's retain loss and SA's replay saw). And for each method, the
stopping check's last forget rate (on `CHECK_SEEDS`) beside the evaluation's (on the profile's `forget_seeds`), each
with its Wilson interval: do the two agree (intervals overlap)?
`--all` adds the baselines beyond the paper (UCE, CA, CA (noise), FMN); UCE, a closed form, runs once.
`--forget-noise per-image`: the stopping check and the evaluation both draw each forget image with its own noise
(`sampling.image_seed`) instead of one noise per seed, so the runs stop at other steps and train again.
Each method's evaluation is written to the JSON as soon as it is measured (the file says `"complete": false` until
the last), keyed on what it was measured from (`entry_key`: the method's code, its kind rule, the profile, the task,
the base, the stopping ladder). A second call, or one after an interruption, reads the entries whose key still
matches and runs only the rest, so a pass over the eleven pairs can be spread over sessions with nothing but the
committed JSON (`--fresh` measures everything again). The runs themselves are cached too (`run_method`).
A change to `evaluate` itself is not in the key: pass `--fresh` after one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from unlearnkit import world
from unlearnkit.data import pipeline_fingerprint
from unlearnkit.experiments import (ESCALATE_STEPS, ESCALATION, FIGURE_METHODS, KIND_RULES, TABLE_EXTRAS, profile,
                                    run_method, run_until_forgotten)
from unlearnkit.experiments.tuned import tuned
from unlearnkit.io import atomic_write, cache_key
from unlearnkit.evaluation import CHECK_SEEDS, LPIPSDistance, evaluate, format_ci, wilson_ci
from unlearnkit.evaluation.claims import claims, on_training_prompts
from unlearnkit.methods import make_config, method_code_hash
from unlearnkit.models import load_base
from unlearnkit.sampling import NOISE

BEYOND = {label: m for label, (m, kw) in TABLE_EXTRAS.items() if not kw}  # UCE, CA, CA (noise), FMN
KEEP = ("lpips_ret", "lpips_ret_ci", "lpips_neighbour", "lpips_neighbour_ci", "lpips_rest", "lpips_rest_ci",
        "forget_rate", "forget_rate_ci", "retain_accuracy", "n_retain", "n_forget")  # what the JSON keeps of evaluate


def like_of(method: str) -> str | None:
    """The method whose stopping checks `method` climbs with (OVW w/o L_help keeps OVW's rung), else None."""
    return "ovw" if method == "ovw-nohelp" else None


def entry_key(base_fp: str, task, method: str, P) -> str:
    """What one method's entry in the JSON was measured from: its code (and that of the method it climbs with),
    its starting config (the kind rule), the profile (evaluation settings and forget noise included), the task, the
    base's fingerprint and the ladder `run_until_forgotten` climbs. An entry whose key differs is measured again."""
    like = like_of(method)
    return cache_key([method, method_code_hash(method), like and method_code_hash(like), like and tuned(task.name, like, task.kind),
                      tuned(task.name, method, task.kind), dataclasses.asdict(P), dataclasses.asdict(task), base_fp,
                      list(ESCALATION), ESCALATE_STEPS, list(CHECK_SEEDS)])


def stored_entries(path: Path, args, P) -> dict:
    """{label: entry} of an earlier call's JSON for the same pair, profile and noise (a missing or other file: {})."""
    try:
        d = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = (d.get("forget"), d.get("neighbour"), d.get("profile"), d.get("forget_noise", "shared")) == \
        (args.forget, args.neighbour, P.name, P.forget_noise)
    return {label: e for label, e in d.get("results", {}).items() if "key" in e} if same else {}


def check_agreement(run, n_forget: int, r) -> dict | None:
    """The stopping check's last forget rate and the evaluation's, each with its Wilson interval; None: no check."""
    if not run.forget_checks:
        return None
    step, rate = max(run.forget_checks.items())
    n = n_forget * len(CHECK_SEEDS)
    ci = wilson_ci(round(rate * n), n)  # the check logs its rate; its images were n
    ev, ev_ci = r["forget_rate"], r["forget_rate_ci"]
    return {"check_step": step, "check": rate, "check_ci": ci, "check_images": n, "eval": ev, "eval_ci": ev_ci,
            "eval_images": r["n_forget"], "agree": ci[0] <= ev_ci[1] and ev_ci[0] <= ci[1]}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forget", required=True, help="a concept word of the embedded world")
    ap.add_argument("--neighbour", required=True, help="the retain concept of the same kind to watch")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--out", default=None, help="JSON with every evaluation and claim (default bench/claims-WORD.json)")
    ap.add_argument("--all", action="store_true", help="also the baselines beyond the paper: UCE, CA, CA (noise), FMN")
    ap.add_argument("--forget-noise", default=None, choices=NOISE,
                    help="the forget images' noise in the stopping check and the evaluation (default: the profile's)")
    ap.add_argument("--fresh", action="store_true", help="measure every method again, not reading the JSON's entries")
    args = ap.parse_args(argv)
    P = profile(args.profile)
    if args.forget_noise:
        P = dataclasses.replace(P, forget_noise=args.forget_noise)
    task = P.trim(world.task(args.forget, neighbour=args.neighbour, name=f"pair-{args.forget}-{args.neighbour}"))
    out = Path(args.out or f"bench/claims-{args.forget}" + ("" if P.forget_noise == "shared" else f"-{P.forget_noise}")
               + ".json")
    base, lpips = load_base(), LPIPSDistance()
    base_fp = pipeline_fingerprint(base)
    stored = {} if args.fresh else stored_entries(out, args, P)
    methods = {**{label: m for m, label in FIGURE_METHODS.items()}, **(BEYOND if args.all else {})}
    keys = {label: entry_key(base_fp, task, m, P) for label, m in {**methods, **BEYOND}.items()}
    # an earlier call's entries measured from the same key are kept (one of --all's too, when this call has no --all)
    entries = {label: e for label, e in stored.items() if e["key"] == keys.get(label)}
    reused = list(entries)

    def write(complete: bool, rows=(), train_rows=()) -> None:  # the claims only once every method is in
        atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(
            {"forget": args.forget, "neighbour": args.neighbour, "profile": P.name, "retain": "held-out (train beside)",
             "forget_noise": P.forget_noise, "rules": KIND_RULES.get(task.kind, {}), "complete": complete,
             "results": entries,
             "claims": [dict(zip(("claim", "method", "holds", "numbers"), c)) | {"holds_on_training_prompts": t[2]}
                        for c, t in zip(rows, train_rows)]}, indent=1, default=str)))

    for label, m in methods.items():
        if label in entries:
            continue
        if make_config(m).steps == 0:  # a closed form: one edit, nothing to train until forgotten
            run = run_method(base, task, m, P, progress=False)
        else:
            run = run_until_forgotten(base, task, m, P, progress=False, like=like_of(m))
        r = evaluate(base, run.pipeline, task, lpips=lpips, progress=False, on="both", **P.evaluation)
        entries[label] = {**{k: r.get(k) for k in KEEP}, "lr": run.config.lr, "steps": len(run.history),
                          "checks": run.forget_checks,
                          "train": {k: r["train"].get(k) for k in KEEP if k in r["train"]},
                          "check_agreement": check_agreement(run, len(task.forget_prompts), r), "key": keys[label]}
        write(complete=False)  # an interrupted pass keeps what it measured
    order = [*methods, *BEYOND]
    entries = dict(sorted(entries.items(), key=lambda kv: order.index(kv[0])))
    results = results_of(entries)
    rows, train_rows = claims(results), claims(on_training_prompts(results))
    write(True, rows, train_rows)
    rule = KIND_RULES.get(task.kind)
    print(f"forget {args.forget!r}, watch {args.neighbour!r} ({P.name} profile; "
          + (f"the {task.kind} rule {rule}, else the defaults" if rule else "method defaults")
          + f", trained until forgotten: at most {ESCALATE_STEPS}x the steps, lr x {', '.join(map(str, ESCALATION))})")
    if reused:
        print(f"read from {out} (measured from the same code, rule and profile): {', '.join(reused)}")
    print("| method | lr | steps | held-out checks (step: forget rate) |\n|---|---|---|---|")
    for label, t in entries.items():
        lr = f"{t['lr']:.2g}" if t["steps"] else "— (closed form)"
        print(f"| {label} | {lr} | {t['steps']} | " + ", ".join(f"{k}: {v:.2f}" for k, v in t["checks"].items()) + " |")
    print("| method | last check [Wilson 95%] (images) | evaluation [Wilson 95%] (images) | agree |\n|---|---|---|---|")
    for label, t in entries.items():
        if a := t["check_agreement"]:
            print(f"| {label} | {format_ci(a['check'], a['check_ci'], 2)} ({a['check_images']}) | "
                  f"{format_ci(a['eval'], a['eval_ci'], 2)} ({a['eval_images']}) | {'yes' if a['agree'] else 'no'} |")
    print("| claim | method | held-out prompts | training prompts | numbers (held-out) |\n|---|---|---|---|---|")
    word = lambda h: "—" if h is None else ("holds" if h else "fails")  # noqa: E731
    for (claim, who, holds, numbers), (_, _, holds_train, _) in zip(rows, train_rows):
        print(f"| {claim} | {who} | {word(holds)} | {word(holds_train)} | {numbers} |")


def results_of(entries: dict) -> dict:
    """The entries as the claims read them: evaluate's numbers (intervals as tuples), `train` beside."""
    tup = lambda d: {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}  # noqa: E731
    return {label: {**tup(e), "train": tup(e["train"])} for label, e in entries.items()}


if __name__ == "__main__":
    sys.exit(main())
