"""The paper's claims on any concept pair of the embedded world: each printed as holds / fails, with its numbers.

    python bench/claims.py --forget WORD --neighbour WORD [--profile cpu] [--out bench/claims-WORD.json]

Runs the Table-1 methods on the task that forgets WORD and watches its neighbour, each made to forget by
`experiments.run_until_forgotten`: its kind's rule (`experiments.KIND_RULES`; a new pair has no tuned configs)
trained until a check on held-out seeds says forgotten, at a higher learning rate where it does not (OVW w/o L_help
climbs with OVW's checks). Then it evaluates each against the base and checks:
  forgets       the method forgot (forget rate <= 0.2); the claims below count only methods that did
  (a) neighbour the neighbour concept pays most: LPIPS_ret on its prompts above the rest's, intervals disjoint
  (b) help      OVW (and Saddle) keep the model closer to the base than every baseline that forgot (ESD, SalUn, SA)
  (c) L_help    removing L_help from OVW raises LPIPS_ret (intervals disjoint)
Runs are cached (`run_method`), so a second call or an interrupted one costs only what is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unlearnkit import world
from unlearnkit.experiments import ESCALATE_STEPS, ESCALATION, FIGURE_METHODS, KIND_RULES, profile, run_until_forgotten
from unlearnkit.io import atomic_write
from unlearnkit.evaluation import FORGOT_BELOW, LPIPSDistance, evaluate, format_ci
from unlearnkit.models import load_base

BASELINES, HELPED = ("ESD", "SalUn", "SA", "UCE", "CA", "CA (noise)", "FMN"), ("OVW", "Saddle")  # rivals: those present


def claims(results: dict) -> list[tuple[str, str, bool | None, str]]:
    """[(claim, who, holds (None: not testable), numbers)] from {display name: evaluate dict}."""
    out, forgot = [], {m: r["forget_rate"] <= FORGOT_BELOW for m, r in results.items()}
    for m, r in results.items():
        out.append(("forgets", m, forgot[m], f"forget rate {r['forget_rate']:.2f}"))
    for m, r in results.items():
        if "lpips_neighbour" not in r:
            continue
        holds = r["lpips_neighbour_ci"][0] > r["lpips_rest_ci"][1] if forgot[m] else None
        out.append(("(a) neighbour pays most", m, holds, f"neighbour {format_ci(r['lpips_neighbour'], r['lpips_neighbour_ci'])}"
                    f" vs rest {format_ci(r['lpips_rest'], r['lpips_rest_ci'])}"))
    for h in HELPED:
        rivals = [b for b in BASELINES if forgot.get(b)]
        if h not in results or not forgot[h] or not rivals:
            out.append(("(b) help losses keep integrity", h, None, "not testable: it or every baseline did not forget"))
            continue
        worse = [b for b in rivals if results[h]["lpips_ret"] >= results[b]["lpips_ret"]]
        out.append(("(b) help losses keep integrity", h, not worse, f"{h} {results[h]['lpips_ret']:.3f} vs "
                    + ", ".join(f"{b} {results[b]['lpips_ret']:.3f}" for b in rivals)))
    a, b = results.get("OVW"), results.get("OVW w/o L_help")
    if a and b:
        out.append(("(c) L_help matters", "OVW", a["lpips_ret_ci"][1] < b["lpips_ret_ci"][0],
                    f"with {format_ci(a['lpips_ret'], a['lpips_ret_ci'])}, without {format_ci(b['lpips_ret'], b['lpips_ret_ci'])}"))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--forget", required=True, help="a concept word of the embedded world")
    ap.add_argument("--neighbour", required=True, help="the retain concept of the same kind to watch")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--out", default=None, help="JSON with every evaluation and claim (default bench/claims-WORD.json)")
    args = ap.parse_args(argv)
    P = profile(args.profile)
    task = P.trim(world.task(args.forget, neighbour=args.neighbour, name=f"pair-{args.forget}-{args.neighbour}"))
    base, lpips = load_base(), LPIPSDistance()
    results, trained = {}, {}
    for m, label in FIGURE_METHODS.items():
        run = run_until_forgotten(base, task, m, P, progress=False, like="ovw" if m == "ovw-nohelp" else None)
        results[label] = evaluate(base, run.pipeline, task, lpips=lpips, progress=False, **P.evaluation)
        trained[label] = {"lr": run.config.lr, "steps": len(run.history), "checks": run.forget_checks}
    rows = claims(results)
    rule = KIND_RULES.get(task.kind)
    print(f"forget {args.forget!r}, watch {args.neighbour!r} ({P.name} profile; "
          + (f"the {task.kind} rule {rule}, else the defaults" if rule else "method defaults")
          + f", trained until forgotten: at most {ESCALATE_STEPS}x the steps, lr x {', '.join(map(str, ESCALATION))})")
    print("| method | lr | steps | held-out checks (step: forget rate) |\n|---|---|---|---|")
    for label, t in trained.items():
        print(f"| {label} | {t['lr']:.2g} | {t['steps']} | " + ", ".join(f"{k}: {v:.2f}" for k, v in t["checks"].items()) + " |")
    print("| claim | method | holds | numbers |\n|---|---|---|---|")
    for claim, who, holds, numbers in rows:
        print(f"| {claim} | {who} | {'—' if holds is None else ('holds' if holds else 'fails')} | {numbers} |")
    out = Path(args.out or f"bench/claims-{args.forget}.json")
    keep = ("lpips_ret", "lpips_ret_ci", "lpips_neighbour", "lpips_neighbour_ci", "lpips_rest", "lpips_rest_ci",
            "forget_rate", "retain_accuracy")
    atomic_write(out, lambda tmp: Path(tmp).write_text(json.dumps(
        {"forget": args.forget, "neighbour": args.neighbour, "profile": P.name,
         "results": {m: {**{k: r.get(k) for k in keep}, **trained[m]} for m, r in results.items()},
         "claims": [dict(zip(("claim", "method", "holds", "numbers"), c)) for c in rows]}, indent=1)))


if __name__ == "__main__":
    sys.exit(main())
