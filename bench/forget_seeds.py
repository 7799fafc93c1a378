"""The forget rate seed by seed: is a stopping check on two seeds, or an evaluation on four, a sample of images or
of seeds?

    python bench/forget_seeds.py --forget red --neighbour yellow --method ovw [--seeds 0-3,1000-1005,...]
                                 [--noise shared|per-image]

Opens the run `bench/claims.py` trained for the pair (the cached `experiments.run_until_forgotten` rung, so nothing
trains if claims.py ran first), samples every forget prompt at each seed (the profile's sampler, which the stopping
check and the evaluation also use) and has the classifier judge each image. Printed per seed: k of n images still show the
concept. Then, for the stopping check's seeds (`CHECK_SEEDS`), the evaluation's (`forget_seeds`) and all of them: the
pooled rate with Wilson's interval over images, and `seed_bootstrap_ci`'s interval over seeds. Every prompt's image
at one seed starts from the same noise (`--noise shared`, the kit's default), so where seed rates differ the second
is the honest one; with `--noise per-image` (`sampling.image_seed`) each image has its own noise, a seed is only a
label for a batch of independent draws, and the two intervals should agree.
Writes JSON (default bench/forget-seeds-WORD-METHOD.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from unlearnkit import world
from unlearnkit.evaluation import CHECK_SEEDS, format_ci, seed_bootstrap_ci, wilson_ci
from unlearnkit.evaluation.classifier import load_classifier
from unlearnkit.evaluation.judges import forget_hits
from unlearnkit.experiments import profile, run_until_forgotten
from unlearnkit.io import atomic_write
from unlearnkit.methods import canonical, make_config
from unlearnkit.models import load_base
from unlearnkit.sampling import NOISE, grid, sample_pairs

HERE = Path(__file__).resolve().parent


def parse_seeds(text: str) -> list[int]:
    """'0-3,1000,2000-2001' -> [0, 1, 2, 3, 1000, 2000, 2001]."""
    out = []
    for part in text.split(","):
        lo, _, hi = part.strip().partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or (hi and int(hi) < int(lo)):
            raise ValueError(f"--seeds {text!r}: {part!r} is not a seed or a range a-b (a <= b); e.g. 0-3,1000-1005")
        out += list(range(int(lo), int(hi or lo) + 1))
    return list(dict.fromkeys(out))


def summarise(per_seed: dict, seeds) -> dict:
    """Pooled rate, Wilson over images and the seed bootstrap over `seeds` (keys of `per_seed`: hit lists)."""
    groups = [per_seed[s] for s in seeds]
    k, n = sum(sum(g) for g in groups), sum(len(g) for g in groups)
    return {"seeds": list(seeds), "rate": k / n, "images": n, "wilson": wilson_ci(k, n),
            "seed_bootstrap": seed_bootstrap_ci(groups)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--forget", required=True, help="a concept word of the embedded world")
    ap.add_argument("--neighbour", required=True, help="the neighbour bench/claims.py watched for it")
    ap.add_argument("--method", required=True, help="a trained method (ovw, ovw-nohelp, esd-x, sa, ...)")
    ap.add_argument("--profile", default="cpu")
    ap.add_argument("--seeds", default="0-7,1000-1007,2000-2007", help="seeds to sample, e.g. 0-3,1000-1005")
    ap.add_argument("--noise", default="shared", choices=NOISE, help="the forget images' noise: one per seed "
                    "(shared, what the kit's check and evaluation use) or one per image")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args(argv)
    try:
        seeds, name = parse_seeds(args.seeds), canonical(args.method)
        task = world.task(args.forget, neighbour=args.neighbour, name=f"pair-{args.forget}-{args.neighbour}")
    except (KeyError, ValueError) as e:
        ap.error(str(e.args[0] if e.args else e))
    if make_config(name).steps == 0:
        ap.error(f"--method {args.method}: a closed form has no stopping check to compare; pick a trained method")
    P = profile(args.profile)
    task = P.trim(task)
    base = load_base()
    run = run_until_forgotten(base, task, name, P, progress=False, like="ovw" if name == "ovw-nohelp" else None)
    classifier = load_classifier()
    per_seed = {}
    print(f"forget {args.forget!r} ({len(task.forget_prompts)} prompts), {name} at lr {run.config.lr:.2g}, "
          f"{len(run.history)} steps; its checks: {run.forget_checks}; noise: {args.noise}\n\n| seed | still shows it |\n|---|---|")
    for s in seeds:
        images = sample_pairs(run.pipeline, *grid(task.forget_prompts, [s], args.noise), progress=False, **P.sampler)
        per_seed[s] = [bool(h) for h in forget_hits(images, task, classifier=classifier)]
        print(f"| {s} | {sum(per_seed[s])} of {len(per_seed[s])} |", flush=True)
    parts = {"stopping check": [s for s in CHECK_SEEDS if s in per_seed],
             "evaluation": [s for s in P.forget_seeds if s in per_seed], "all": seeds}
    out = {"forget": args.forget, "neighbour": args.neighbour, "method": name, "profile": P.name, "noise": args.noise,
           "lr": run.config.lr, "steps": len(run.history), "checks": run.forget_checks,
           "per_seed": {str(s): sum(h) for s, h in per_seed.items()}, "prompts": len(task.forget_prompts),
           "parts": {label: summarise(per_seed, ss) for label, ss in parts.items() if ss}}
    print("\n| seeds | forget rate | Wilson over images | bootstrap over seeds |\n|---|---|---|---|")
    for label, r in out["parts"].items():
        print(f"| {label} ({len(r['seeds'])} seeds, {r['images']} images) | {r['rate']:.2f} | "
              f"{format_ci(r['rate'], r['wilson'], 2).split(' ', 1)[1]} | "
              f"{format_ci(r['rate'], r['seed_bootstrap'], 2).split(' ', 1)[1]} |")
    path = args.out or HERE / f"forget-seeds-{args.forget}-{name}{'' if args.noise == 'shared' else '-' + args.noise}.json"
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(out, indent=1)))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
