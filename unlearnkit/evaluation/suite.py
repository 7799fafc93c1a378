"""The retention metric I and the evaluation suite (docs/METHODS.md, "The retention metric").

LPIPS_ret = mean LPIPS(x0, x) over retain prompts × seeds, where x0 and x are the base and the
unlearned model's images for the same prompt and the same initial noise; I = 1 − LPIPS_ret.
Base images come from the disk cache (they depend only on the base, prompts, seeds and sampler).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field, fields

import torch

from .. import world
from ..data import cached_sample_pairs, pipeline_fingerprint
from ..sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS, NOISE, grid
from .clip import clip_score
from .fid import classifier_fid, fid_ci
from .judges import DidNotForget, FORGOT_BELOW, did_not_forget, judge_for
from .lpips import LPIPS_SIZE, LPIPSDistance
from .stats import bootstrap_ci, rate_ci


@dataclass
class Evaluation:
    """What `evaluate` measured. Reads like the dict it used to be (`ev["lpips_ret"]`, `ev.get("fid")`, `"fid" in
    ev`, `dict(ev)`): a key is there when its value was measured (None fields are absent; `forgot` always is)."""

    lpips_ret: float  # mean LPIPS(base image, unlearned image) over retain prompts × seeds (docs/METHODS.md, eq. 25)
    integrity: float  # I = 1 − lpips_ret (eq. 26)
    lpips_ret_ci: tuple  # 95% bootstrap interval over the prompt × seed pairs (eq. 28)
    lpips_forget: float  # the same on the forget prompts (high: the output changed)
    lpips_forget_ci: tuple
    lpips_net: str  # which LPIPS network, at which size
    retain_pairs: list  # one dict per retain (prompt, seed) pair, in evaluation order: prompt, seed, concept, lpips
    per_concept: dict  # lpips_ret per retain concept, neighbour first (eq. 27)
    n_retain: int
    n_forget: int
    seeds: list  # the seeds of the retain pairs
    steps: int
    guidance_scale: float
    seconds: float = 0.0
    forgot: bool | None = None  # forget_rate <= forgot_below; None without a judge
    lpips_neighbour: float | None = None  # LPIPS_ret on the neighbour concept's retain pairs, and on the rest
    lpips_neighbour_ci: tuple | None = None
    lpips_rest: float | None = None
    lpips_rest_ci: tuple | None = None
    judge: str | None = None  # 'classifier' (the embedded world's) or 'clip' (zero-shot over the task's concepts)
    forget_rate: float | None = None  # share of forget images that still show the concept (eq. 29)
    forget_rate_ci: tuple | None = None
    retain_accuracy: float | None = None  # share of retain images the judge reads as their prompt (eq. 30)
    retain_accuracy_ci: tuple | None = None
    base_forget_rate: float | None = None  # the same two for the base model
    base_forget_rate_ci: tuple | None = None
    base_retain_accuracy: float | None = None
    base_retain_accuracy_ci: tuple | None = None
    fid: float | None = None  # FID on the classifier's features (eq. 31), with its interval
    fid_ci: tuple | None = None
    fid_features: str | None = None
    clip_score: float | None = None  # CLIPScore of the retain images (with clip=)
    on: str = "eval"  # which retain prompts: 'eval' (held out from training), 'train', or 'all' (a task without split)
    forget_seeds: list | None = None  # the seeds of the forget images (forget rate, LPIPS_forget)
    forget_noise: str = "shared"  # how they got their noise (`sampling.NOISE`): one per seed, or one per image
    train: dict | None = None  # with on='both': LPIPS_ret, I, per concept, neighbour/rest, accuracy on the training part
    extra: dict = field(default_factory=dict)  # what a caller adds (`ev["train_seconds"] = ...`)

    def keys(self):
        names = [f.name for f in fields(self) if f.name != "extra"]
        return [n for n in names if getattr(self, n) is not None or n == "forgot"] + list(self.extra)

    def __getitem__(self, key):
        if key in self.extra:
            return self.extra[key]
        if key not in self.keys():
            raise KeyError(key)
        return getattr(self, key)

    def __setitem__(self, key, value):
        if key in {f.name for f in fields(self)} - {"extra"}:
            setattr(self, key, value)
        else:
            self.extra[key] = value

    def __contains__(self, key):
        return key in self.keys()

    def __iter__(self):
        return iter(self.keys())

    def __len__(self):
        return len(self.keys())

    def get(self, key, default=None):
        return self[key] if key in self else default

    def items(self):
        return [(k, self[k]) for k in self.keys()]

    def values(self):
        return [self[k] for k in self.keys()]


ON = ("eval", "train", "both")
# the retain part's measurements `on='both'` repeats on the training part (`Evaluation.train`)
TRAIN_KEYS = ("lpips_ret", "lpips_ret_ci", "integrity", "per_concept", "n_retain", "lpips_neighbour",
              "lpips_neighbour_ci", "lpips_rest", "lpips_rest_ci", "retain_accuracy", "retain_accuracy_ci", "fid")


def evaluate(base, unlearned, task, seeds=(0, 1), steps: int = DEFAULT_STEPS,
             guidance_scale: float = DEFAULT_GUIDANCE, lpips_net: str = "stlpips", lpips_size: int = LPIPS_SIZE,
             max_retain: int | None = None, cache_dir=None, classifier=None, fid: bool = True,
             lpips: LPIPSDistance | None = None, clip=None, batch_size: int | None = None,
             progress: bool | None = None, forgot_below: float = FORGOT_BELOW, on: str = "eval",
             forget_seeds=None, name: str | None = None, forget_noise: str = "shared") -> Evaluation:
    """Retention (LPIPS_ret, I), forgetting and accuracy of `unlearned` against `base` on `task`: an `Evaluation`.

    LPIPS_ret and I with their interval, per concept (neighbour first), on the neighbour's pairs and the rest; the
    forget rate and retain accuracy of both models with intervals, judged by the concept classifier on the embedded
    world or, elsewhere, with `clip` (a path / hub id, or a (model, processor) pair) by CLIP zero-shot over the
    task's concepts (plus clip_score); FID on the classifier's features (embedded world, `fid=True`).
    `on`: which retain prompts — 'eval' (default: `task.retain_eval`, held out from every method's training),
    'train' (`task.retain_train`, the ones the methods with retain data trained on), or 'both' (eval, and the
    retain measurements on the training part in `.train`). A task without a split reads all its retain prompts
    (`.on` says 'all'). `max_retain` evaluates the first N prompts of that part (neighbour prompts come first).
    `forget_seeds` (default: `seeds`): the seeds of the forget images, the forget rate's sample; more seeds, a
    narrower interval (a Wilson interval, `stats.rate_ci`). `forget_noise`: 'shared' (every forget prompt at a seed
    starts from that seed's noise, as the retain pairs do) or 'per-image' (`sampling.image_seed`: each forget image its
    own noise, the same for both models); only with 'per-image' are the images independent, so that the Wilson
    interval over images holds. `forgot` is True when forget_rate <= `forgot_below`
    (else a `DidNotForget` warning, opened by `name` — the method or run — says so: integrity means little where
    nothing was forgotten; never for the base against itself).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; evaluate needs at least one seed, e.g. seeds=[0, 1]")
    forget_seeds = seeds if forget_seeds is None else [int(s) for s in forget_seeds]
    if not forget_seeds:
        raise ValueError("forget_seeds is empty; give at least one seed, or None for the retain seeds")
    if forget_noise not in NOISE:
        raise ValueError(f"forget_noise={forget_noise!r}: choose 'shared' (one noise per seed, every forget prompt "
                         "starting from it) or 'per-image' (each forget image its own noise)")
    if on not in ON:
        raise ValueError(f"on={on!r}: choose 'eval' (the held-out retain prompts), 'train' (the training ones) or "
                         "'both'")
    start = time.time()
    lpips = lpips or LPIPSDistance(lpips_net, lpips_size)
    part = task.retain_train if on == "train" else task.retain_eval
    retain_prompts = part[:max_retain] if max_retain else part
    r_prompts, r_seeds = grid(retain_prompts, seeds)
    f_prompts, f_seeds = grid(task.forget_prompts, forget_seeds, forget_noise)
    base_fp = pipeline_fingerprint(base)
    same = pipeline_fingerprint(unlearned) == base_fp

    def images(pipe, fp, prompts, s):
        return cached_sample_pairs(pipe, prompts, s, steps, guidance_scale, cache_dir, fp, progress, batch_size)

    base_r, base_f = images(base, base_fp, r_prompts, r_seeds), images(base, base_fp, f_prompts, f_seeds)
    if same:
        new_r, new_f = base_r, base_f
    else:
        new_fp = pipeline_fingerprint(unlearned)
        new_r, new_f = images(unlearned, new_fp, r_prompts, r_seeds), images(unlearned, new_fp, f_prompts, f_seeds)
    d_r, d_f = lpips(base_r, new_r), lpips(base_f, new_f)
    concept = dict(zip(task.retain_prompts, task.retain_concepts)) if task.retain_concepts else {}
    pairs = [{"prompt": p, "seed": s, "concept": concept.get(p, "retain"), "lpips": d}
             for p, s, d in zip(r_prompts, r_seeds, d_r.tolist())]
    per = {}
    for pair in pairs:
        per.setdefault(pair["concept"], []).append(pair["lpips"])
    out = Evaluation(lpips_ret=float(d_r.mean()), integrity=1 - float(d_r.mean()), lpips_ret_ci=bootstrap_ci(d_r),
                     lpips_forget=float(d_f.mean()), lpips_forget_ci=bootstrap_ci(d_f), lpips_net=lpips.name,
                     retain_pairs=pairs, per_concept={k: sum(v) / len(v) for k, v in per.items()},
                     n_retain=len(r_prompts), n_forget=len(f_prompts), seeds=seeds, steps=steps,
                     guidance_scale=guidance_scale, on=("train" if on == "train" else "eval") if task.held_out else "all",
                     forget_seeds=forget_seeds, forget_noise=forget_noise)
    # the paper's claim (a): the neighbour concept pays most. LPIPS_ret on its prompts and on the rest, with intervals
    near = torch.tensor([p["concept"] == task.neighbour_concept for p in pairs])
    if task.neighbour_concept and near.any() and not near.all():
        for key, rows in (("lpips_neighbour", near), ("lpips_rest", ~near)):
            out[key], out[key + "_ci"] = float(d_r[rows].mean()), bootstrap_ci(d_r[rows])

    # forgetting and accuracy, of both models, by one judge: the concept classifier on the world, else CLIP
    judge = judge_for(task, retain_prompts, classifier=classifier, clip=clip)
    if judge is not None:
        out.judge = judge.name
        for prefix, (f_img, r_img) in (("", (new_f, new_r)), ("base_", (base_f, base_r))):
            for key, hits in (("forget_rate", judge.forget_hits(f_img)),
                              ("retain_accuracy", judge.retain_hits(r_img, r_prompts))):
                out[prefix + key], out[prefix + key + "_ci"] = rate_ci(hits)
        if judge.name == "classifier" and fid:
            # real images: renders of the same retain prompts with the same evaluation seeds
            real = world.render_batch(r_prompts, r_seeds, resolution=new_r.shape[-1])
            out.fid, out.fid_ci = classifier_fid(judge.model, real, new_r), fid_ci(judge.model, real, new_r)
            out.fid_features = "concept classifier (128-d penultimate layer), not Inception"
        if judge.name == "clip":
            out.clip_score = clip_score(judge.model, new_r, r_prompts)
    if on == "both" and task.held_out:
        with warnings.catch_warnings():  # the same forget images: this call's own warning below says it once
            warnings.simplefilter("ignore", DidNotForget)
            train = evaluate(base, unlearned, task, seeds=seeds, steps=steps, guidance_scale=guidance_scale,
                             lpips=lpips, max_retain=max_retain, cache_dir=cache_dir, classifier=classifier, fid=fid,
                             clip=clip, batch_size=batch_size, progress=progress, forgot_below=forgot_below,
                             on="train", forget_seeds=forget_seeds, forget_noise=forget_noise)
        out.train = {k: train[k] for k in TRAIN_KEYS if k in train}
    out.seconds = time.time() - start
    out.forgot = None if out.forget_rate is None else out.forget_rate <= forgot_below
    if out.forgot is False and not same and (1.0 if out.base_forget_rate is None else out.base_forget_rate) > forgot_below:
        warnings.warn(did_not_forget(out.forget_rate, forgot_below, f"{name} on {task.name}" if name else None),
                      DidNotForget, stacklevel=2)
    return out
