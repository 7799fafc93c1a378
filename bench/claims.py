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
Runs are cached (`run_method`), so a second call or an interrupted one costs only what is missing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from unlearnkit import world
from unlearnkit.experiments import (ESCALATE_STEPS, ESCALATION, FIGURE_METHODS, KIND_RULES, TABLE_EXTRAS, profile,
                                    run_method, run_until_forgotten)
from unlearnkit.io import atomic_write
from unlearnkit.evaluation import CHECK_SEEDS, LPIPSDistance, evaluate, format_ci, wilson_ci
from unlearnkit.evaluation.claims import claims, on_training_prompts
from unlearnkit.methods import make_config
from unlearnkit.models import load_base
from unlearnkit.sampling import NOISE

BEYOND = {label: m for label, (m, kw) in TABLE_EXTRAS.items() if not kw}  # UCE, CA, CA (noise), FMN


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
    args = ap.parse_args(argv)
    P = profile(args.profile)
    if args.forget_noise:
        P = dataclasses.replace(P, forget_noise=args.forget_noise)
    task = P.trim(world.task(args.forget, neighbour=args.neighbour, name=f"pair-{args.forget}-{args.neighbour}"))
    base, lpips = load_base(), LPIPSDistance()
    results, trained, agreement = {}, {}, {}
    methods = {**{label: m for m, label in FIGURE_METHODS.items()}, **(BEYOND if args.all else {})}
    for label, m in methods.items():
        if make_config(m).steps == 0:  # a closed form: one edit, nothing to train until forgotten
            run = run_method(base, task, m, P, progress=False)
        else:
            run = run_until_forgotten(base, task, m, P, progress=False, like="ovw" if m == "ovw-nohelp" else None)
        results[label] = evaluate(base, run.pipeline, task, lpips=lpips, progress=False, on="both", **P.evaluation)
        trained[label] = {"lr": run.config.lr, "steps": len(run.history), "checks": run.forget_checks}
        agreement[label] = check_agreement(run, len(task.forget_prompts), results[label])
    rows, train_rows = claims(results), claims(on_training_prompts(results))
    rule = KIND_RULES.get(task.kind)
    print(f"forget {args.forget!r}, watch {args.neighbour!r} ({P.name} profile; "
          + (f"the {task.kind} rule {rule}, else the defaults" if rule else "method defaults")
          + f", trained until forgotten: at most {ESCALATE_STEPS}x the steps, lr x {', '.join(map(str, ESCALATION))})")
    print("| method | lr | steps | held-out checks (step: forget rate) |\n|---|---|---|---|")
    for label, t in trained.items():
        lr = f"{t['lr']:.2g}" if t["steps"] else "— (closed form)"
        print(f"| {label} | {lr} | {t['steps']} | " + ", ".join(f"{k}: {v:.2f}" for k, v in t["checks"].items()) + " |")
    print("| method | last check [Wilson 95%] (images) | evaluation [Wilson 95%] (images) | agree |\n|---|---|---|---|")
    for label, a in agreement.items():
        if a:
            print(f"| {label} | {format_ci(a['check'], a['check_ci'], 2)} ({a['check_images']}) | "
                  f"{format_ci(a['eval'], a['eval_ci'], 2)} ({a['eval_images']}) | {'yes' if a['agree'] else 'no'} |")
    print("| claim | method | held-out prompts | training prompts | numbers (held-out) |\n|---|---|---|---|---|")
    word = lambda h: "—" if h is None else ("holds" if h else "fails")  # noqa: E731
    for (claim, who, holds, numbers), (_, _, holds_train, _) in zip(rows, train_rows):
        print(f"| {claim} | {who} | {word(holds)} | {word(holds_train)} | {numbers} |")
    out = Path(args.out or f"bench/claims-{args.forget}" + ("" if P.forget_noise == "shared" else f"-{P.forget_noise}")
               + ".json")
    keep = ("lpips_ret", "lpips_ret_ci", "lpips_neighbour", "lpips_neighbour_ci", "lpips_rest", "lpips_rest_ci",
            "forget_rate", "forget_rate_ci", "retain_accuracy", "n_retain", "n_forget")
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(
        {"forget": args.forget, "neighbour": args.neighbour, "profile": P.name, "retain": "held-out (train beside)",
         "forget_noise": P.forget_noise,
         "results": {m: {**{k: r.get(k) for k in keep}, **trained[m],
                         "train": {k: r["train"].get(k) for k in keep if k in r["train"]},
                         "check_agreement": agreement[m]} for m, r in results.items()},
         "claims": [dict(zip(("claim", "method", "holds", "numbers"), c)) | {"holds_on_training_prompts": t[2]}
                    for c, t in zip(rows, train_rows)]}, indent=1, default=str)))


if __name__ == "__main__":
    sys.exit(main())
