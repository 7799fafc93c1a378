"""How well the embedded base model draws its world, judged by the concept classifier.

    python bench/base_quality.py [--model PATH] [--seeds 0,1] [--guidance 2.0] [--steps 20] [--sweep 1.5,2,3,4]

Generates every prompt of the world for each seed (the issue's bar: object >= 90%, colour >= 90%,
style >= 85%), prints the accuracy per kind and per word, the sampling speed, and — with --sweep —
the same on one seed for other guidance scales. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

import unlearnkit as uk
from unlearnkit import world


def judge(pipe, clf, prompts, seeds, steps, guidance):
    """Accuracy per kind, per word, and images/s for every prompt x seed."""
    start = time.time()
    images = uk.sample(pipe, prompts, seeds, steps=steps, guidance_scale=guidance, progress=False)
    seconds = time.time() - start
    pred = clf.predict(images)
    truth = [world.parse(p) for p in prompts for _ in seeds]
    acc = {k: sum(p[k] == q[k] for p, q in zip(pred, truth)) / len(truth) for k in world.KINDS}
    acc["all"] = sum(p == q for p, q in zip(pred, truth)) / len(truth)
    per_word = {k: {w: sum(p[k] == w for p, q in zip(pred, truth) if q[k] == w) / sum(q[k] == w for q in truth)
                    for w in words} for k, words in world.KINDS.items()}
    return acc, per_word, len(images) / seconds


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="a saved pipeline folder (default: the shipped base)")
    ap.add_argument("--seeds", default="0,1", help="comma-separated sampling seeds")
    ap.add_argument("--guidance", type=float, default=uk.sampling.DEFAULT_GUIDANCE, help="classifier-free guidance")
    ap.add_argument("--steps", type=int, default=uk.sampling.DEFAULT_STEPS, help="DDIM steps")
    ap.add_argument("--sweep", default="", help="other guidance scales to try on seed 0, comma-separated")
    args = ap.parse_args(argv)
    pipe = uk.load_pipeline(args.model, device="cpu") if args.model else uk.load_base(device="cpu")
    clf = uk.load_classifier()
    prompts, seeds = world.all_prompts(), [int(s) for s in args.seeds.split(",")]
    acc, per_word, ips = judge(pipe, clf, prompts, seeds, args.steps, args.guidance)
    print(f"{len(prompts) * len(seeds)} images, {args.steps} DDIM steps, guidance {args.guidance}, "
          f"{torch.get_num_threads()} threads: {ips:.2f} images/s")
    print("accuracy: " + ", ".join(f"{k} {v:.1%}" for k, v in acc.items()))
    for kind, words in per_word.items():
        print(f"  {kind}: " + ", ".join(f"{w} {v:.0%}" for w, v in words.items()))
    sweep = {}
    for g in [float(x) for x in args.sweep.split(",") if x]:
        sweep[g], _, _ = judge(pipe, clf, prompts, [0], args.steps, g)
        print(f"guidance {g} (seed 0): " + ", ".join(f"{k} {v:.1%}" for k, v in sweep[g].items()))
    print(json.dumps({"accuracy": acc, "per_word": per_word, "images_per_s": ips, "steps": args.steps,
                      "guidance": args.guidance, "seeds": seeds, "sweep": {str(k): v for k, v in sweep.items()}}))


if __name__ == "__main__":
    sys.exit(main())
