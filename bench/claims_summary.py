"""One table over every pair `bench/claims.py` has written: LPIPS_ret / forget rate per method, each claim on the
held-out and on the training retain prompts, and where the stopping check and the evaluation disagree on the forget
rate; the runs that forgot only by breaking the model (retain accuracy at most BROKEN_AT).

    python bench/claims_summary.py [bench/claims-*.json ...] [--forget-noise per-image]

Reads only the JSON files (no model runs). A file from before the held-out split (no "retain" field) is listed as
such and left out of the counts: its numbers were measured on the training prompts alone. Files are summarised for
one forget noise at a time (`--forget-noise`, default shared; a file that does not say was measured with shared noise).
A file whose pass is still under way (`"complete": false`: bench/claims.py writes each method as it is measured) is
named and left out: its claims are judged only once every method is in.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

from unlearnkit.evaluation import FORGOT_BELOW
from unlearnkit.sampling import NOISE

HERE = Path(__file__).resolve().parent
# a run that forgot while the judge reads at most this share of held-out retain images as their prompt forgot by
# breaking the model: its forget rate is low because nothing is drawn recognisably, not because one concept went
BROKEN_AT = 0.10


def verdicts(claims: list, key: str) -> dict:
    """{claim: ("holds: A, B; fails: C")} for one retain part (`key`: 'holds' or 'holds_on_training_prompts')."""
    by = defaultdict(lambda: {True: [], False: []})
    for c in claims:
        if c[key] is not None:
            by[c["claim"]][bool(c[key])].append(c["method"])
    return {claim: "; ".join(f"{w}: {', '.join(ms)}" for w, ms in (("holds", v[True]), ("fails", v[False])) if ms)
            for claim, v in by.items()}


def read(ap: argparse.ArgumentParser, path: Path) -> dict:
    """One claims file, or one error naming it and what to do."""
    try:
        d = json.loads(path.read_text())
    except FileNotFoundError:
        ap.error(f"{path}: no such file; pass files bench/claims.py wrote (bench/claims-WORD.json)")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        ap.error(f"{path}: not a claims file bench/claims.py wrote ({e.__class__.__name__}: {e})")
    if not isinstance(d, dict) or not {"forget", "results", "claims"} <= set(d):
        ap.error(f"{path}: not a claims file bench/claims.py wrote (it needs 'forget', 'results' and 'claims')")
    return d


def tally(data: list, key: str) -> dict:
    """{(claim, method): (pairs where it holds, pairs where it was judged)} for one retain part."""
    out = defaultdict(lambda: [0, 0])
    for _, d in data:
        for c in d["claims"]:
            if c.get(key) is not None and not c["claim"].startswith("forgets"):
                out[c["claim"], c["method"]][0] += bool(c[key])
                out[c["claim"], c["method"]][1] += 1
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", type=Path, help="claims files (default: every bench/claims-*.json)")
    ap.add_argument("--forget-noise", default="shared", choices=NOISE,
                    help="summarise the files measured with this forget noise (bench/claims.py --forget-noise)")
    args = ap.parse_args(argv)
    paths = args.files or sorted(HERE.glob("claims-*.json"))
    data, other = [], []
    for p in paths:
        d = read(ap, p)
        if d.get("forget_noise", "shared") == args.forget_noise:  # a file that does not say: shared noise
            data.append((p, d))
        else:
            other.append(p.name)
    if other:
        print(f"forget noise {args.forget_noise}; measured with another, left out: {', '.join(other)}\n")
    running = [f"{p.name} ({', '.join(d['results']) or 'no method yet'})" for p, d in data if d.get("complete") is False]
    if running:
        print(f"pass under way, left out (measured so far): {'; '.join(running)}\n")
    data = [(p, d) for p, d in data if d.get("complete") is not False]
    old = [p.name for p, d in data if "retain" not in d]
    data = [(p, d) for p, d in data if "retain" in d]
    if not data:
        print(f"no claims file with {args.forget_noise} forget noise on the held-out split yet" + (f" (before it: {', '.join(old)})" if old else ""))
        return 1
    methods = list(dict.fromkeys(m for _, d in data for m in d["results"]))
    claim_names = ("(a) neighbour pays most", "(b) help losses keep integrity", "(c) L_help matters")
    print("LPIPS_ret (held-out retain prompts) / forget rate; bold: did not forget (forget rate > "
          f"{FORGOT_BELOW}).\n")
    print("| pair | " + " | ".join(methods) + " |\n|---|" + "---|" * len(methods))
    for _, d in data:
        cells = []
        for m in methods:
            r = d["results"].get(m)
            if r is None:
                cells.append("—")
                continue
            rate = f"{r['forget_rate']:.2f}"
            cells.append(f"{r['lpips_ret']:.3f} / " + (f"**{rate}**" if r["forget_rate"] > FORGOT_BELOW else rate))
        print(f"| {d['forget']} / {d['neighbour']} | " + " | ".join(cells) + " |")
    for key, part in (("holds", "held-out retain prompts"), ("holds_on_training_prompts", "training retain prompts")):
        print(f"\nClaims on the {part} (only methods that forgot count):\n")
        print("| pair | " + " | ".join(claim_names) + " |\n|---|---|---|---|")
        for _, d in data:
            v = verdicts(d["claims"], key)
            print(f"| {d['forget']} / {d['neighbour']} | " + " | ".join(v.get(c, "—") for c in claim_names) + " |")
    held, train = tally(data, "holds"), tally(data, "holds_on_training_prompts")
    print(f"\nHow often each claim holds, over the {len(data)} pairs (pairs where the method forgot and the claim "
          "was judged):\n")
    print("| claim | method | held-out prompts | training prompts |\n|---|---|---|---|")
    for (claim, m), (n, of) in sorted(held.items(), key=lambda kv: (kv[0][0], methods.index(kv[0][1])
                                                                     if kv[0][1] in methods else len(methods))):
        tn, tof = train.get((claim, m), (0, 0))
        print(f"| {claim} | {m} | {n} of {of} | {tn} of {tof} |")
    broken = [(d, m, r) for _, d in data for m, r in d["results"].items()
              if r.get("retain_accuracy") is not None and r["retain_accuracy"] <= BROKEN_AT
              and r["forget_rate"] <= FORGOT_BELOW]
    print(f"\nForgot by breaking the model (forget rate ≤ {FORGOT_BELOW}, retain accuracy ≤ {BROKEN_AT} on the "
          "held-out retain prompts):\n")
    print("| pair | method | LPIPS_ret | forget rate | retain accuracy |\n|---|---|---|---|---|")
    print("\n".join(f"| {d['forget']} / {d['neighbour']} | {m} | {r['lpips_ret']:.3f} | {r['forget_rate']:.2f} | "
                    f"{r['retain_accuracy']:.2f} |" for d, m, r in broken) if broken else "| — | — | — | — | — |")
    print("\nStopping check vs evaluation, forget rate with Wilson 95% intervals (methods that trained until forgotten):\n")
    agree = disagree = 0
    rows = []
    for _, d in data:
        for m, r in d["results"].items():
            a = r.get("check_agreement")
            if not a:
                continue
            agree, disagree = agree + a["agree"], disagree + (not a["agree"])
            if not a["agree"]:
                rows.append(f"| {d['forget']} | {m} | {a['check']:.2f} [{a['check_ci'][0]:.2f}, {a['check_ci'][1]:.2f}] "
                            f"({a['check_images']}) | {a['eval']:.2f} [{a['eval_ci'][0]:.2f}, {a['eval_ci'][1]:.2f}] "
                            f"({a['eval_images']}) |")
    print(f"{agree} of {agree + disagree} (pair, method) runs agree (intervals overlap); the ones that do not:\n")
    print("| forget | method | check (images) | evaluation (images) |\n|---|---|---|---|")
    print("\n".join(rows) if rows else "| — | — | — | — |")
    if old:
        print(f"\nBefore the held-out split (not counted): {', '.join(old)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
