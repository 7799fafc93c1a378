"""The retention metric I and the evaluation suite (METHODS.md, "Retention metric").

LPIPS_ret = mean LPIPS(x0, x) over retain prompts × seeds, where x0 and x are the base and the
unlearned model's images for the same prompt and the same initial noise; I = 1 − LPIPS_ret.
Base images come from the disk cache (they depend only on the base, prompts, seeds and sampler).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from . import world
from .data import cached_sample_pairs, pipeline_fingerprint
from .sampling import DEFAULT_GUIDANCE, DEFAULT_STEPS

LPIPS_NETS = ("stlpips", "lpips-alex")
LPIPS_SIZE = 64  # images are resized (bilinear) to this before the network: AlexNet's stride 4 needs room
_ST_WEIGHTS = "weights/vST0.0/alex_shift_tolerant.pth"


class LPIPSDistance(torch.nn.Module):
    """LPIPS between image batches in [0,1], resized to `size`; `.name` says which network and size.

    'stlpips': the shift-tolerant LPIPS (stlpips-pytorch, AlexNet, ships its full weights: offline).
    'lpips-alex': the standard `lpips` package AlexNet (needs torchvision's AlexNet weights).
    """

    def __init__(self, net: str = "stlpips", size: int = LPIPS_SIZE):
        super().__init__()
        if net not in LPIPS_NETS:
            raise ValueError(f"unknown lpips_net {net!r}; choose one of: {', '.join(LPIPS_NETS)}")
        if size < 32:
            raise ValueError(f"lpips_size must be >= 32 (AlexNet's first layer has stride 4), got {size}")
        self.size = size
        if net == "stlpips":
            import importlib.resources

            from stlpips_pytorch import stlpips

            self.model = stlpips.LPIPS(net="alex", variant="shift_tolerant", pretrained=False, verbose=False)
            path = importlib.resources.files("stlpips_pytorch") / _ST_WEIGHTS
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            # strict load: `lins.N` is an alias of `linN` in this model, so fill it from the same tensors
            for k in [k for k in self.model.state_dict() if k.startswith("lins.")]:
                _, i, rest = k.split(".", 2)
                state[k] = state[f"lin{i}.{rest}"]
            self.model.load_state_dict(state, strict=True)
            self.name = f"stlpips-alex-shift-tolerant@{size}px"
        else:
            import lpips

            try:
                self.model = lpips.LPIPS(net="alex", verbose=False)
            except Exception as e:
                raise ValueError(f"lpips_net='lpips-alex' needs torchvision's AlexNet weights, which could not be "
                                 f"loaded ({type(e).__name__}); use lpips_net='stlpips' (works offline)") from e
            self.name = f"lpips-alex@{size}px"
        self.model.eval().requires_grad_(False)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """Per-pair LPIPS [N] (float32, CPU) for images [N,3,H,W] in [0,1]."""
        return self._run(x, y, batch_size, spatial=False).flatten()

    @torch.no_grad()
    def map(self, x: torch.Tensor, y: torch.Tensor, batch_size: int = 128) -> torch.Tensor:
        """Spatial LPIPS [N,1,H,W] (float32, CPU) for images [N,3,H,W] in [0,1]: where the two images differ.

        The network's `spatial` output (each layer's weighted feature difference, bilinearly upsampled to `size`
        px, summed over layers), area-resized to H×W. Its mean over H,W is the per-pair distance of `forward` up
        to the upsampling (which averages each layer's map over a slightly different grid).
        """
        maps = self._run(x, y, batch_size, spatial=True)
        return F.interpolate(maps, size=tuple(x.shape[-2:]), mode="area" if x.shape[-1] <= self.size else "bilinear")

    def _run(self, x, y, batch_size, spatial):
        if x.shape != y.shape:
            raise ValueError(f"LPIPS needs images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        device = next(self.model.parameters()).device
        self.model.spatial = spatial  # both packages read this flag in forward
        try:
            out = []
            for i in range(0, len(x), batch_size):
                a, b = (F.interpolate(t[i:i + batch_size].to(device).float(), size=(self.size, self.size),
                                      mode="bilinear", align_corners=False) for t in (x, y))
                out.append(self.model(a * 2 - 1, b * 2 - 1).float().cpu())
        finally:
            self.model.spatial = False
        return torch.cat(out)


def bootstrap_ci(values: torch.Tensor, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling the prompt × seed pairs)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), (n, len(values)), generator=g)
    means = values[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2])).tolist()
    return lo, hi


class _Features(torch.nn.Module):
    # the classifier's penultimate features, as torchmetrics' custom FID feature extractor
    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, x):
        x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
        return self.classifier.features(F.interpolate(x, size=(world.RESOLUTION, world.RESOLUTION),
                                                      mode="bilinear", align_corners=False))


def classifier_fid(classifier, real: torch.Tensor, fake: torch.Tensor) -> float:
    """FID between two image sets [N,3,H,W] in [0,1] on the concept classifier's 128-d features (not Inception)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_Features(classifier), normalize=True)
    fid.update(real, real=True)
    fid.update(fake, real=False)
    return float(fid.compute())


def frechet_distance(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    """FID's Fréchet distance between Gaussians fitted to two feature sets [..., N, D] (Heusel et al. 2017):
    ‖μ_r − μ_f‖² + Tr Σ_r + Tr Σ_f − 2 Tr (Σ_r Σ_f)^½, in float64, one value per leading index.

    Tr (Σ_r Σ_f)^½ is the nuclear norm of X_f X_rᵀ / (N−1) (X the centred features), an N×N matrix, when N ≤ D;
    else that of Σ_r^½ Σ_f^½. Matches torchmetrics' FID on the same features (tests).
    """
    real, fake = real.double(), fake.double()
    n, d = real.shape[-2:]
    if n < 2:
        raise ValueError(f"a Fréchet distance needs at least 2 feature vectors per set, got {n}")
    mu = real.mean(-2) - fake.mean(-2)
    xr, xf = real - real.mean(-2, keepdim=True), fake - fake.mean(-2, keepdim=True)
    if n <= d:
        cross = torch.linalg.svdvals(xf @ xr.transpose(-1, -2)).sum(-1)
    else:
        def root(x):  # (XᵀX)^½ from its eigendecomposition
            w, v = torch.linalg.eigh(x.transpose(-1, -2) @ x)
            return (v * w.clamp(min=0).sqrt().unsqueeze(-2)) @ v.transpose(-1, -2)

        cross = torch.linalg.svdvals(root(xr) @ root(xf)).sum(-1)
    return (mu * mu).sum(-1) + ((xr * xr).sum((-1, -2)) + (xf * xf).sum((-1, -2)) - 2 * cross) / (n - 1)


@torch.no_grad()
def fid_ci(classifier, real: torch.Tensor, fake: torch.Tensor, n: int = 200, seed: int = 0,
           level: float = 0.95) -> tuple[float, float]:
    """Bootstrap interval of `classifier_fid(classifier, real, fake)`, resampling the (real, fake) pairs.

    Normal-approximation interval (the FID ± z·bootstrap standard deviation, floored at 0), not percentiles:
    resampling with replacement repeats images, and FID's small-sample bias then puts most resampled values
    above the estimate itself (at 40 images: median 13 around an FID of 7.5).
    """
    feats = _Features(classifier)
    fr, ff = feats(real).double().cpu(), feats(fake).double().cpu()
    if len(fr) != len(ff):
        raise ValueError(f"fid_ci resamples pairs: got {len(fr)} real and {len(ff)} fake images")
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(fr), (n, len(fr)), generator=g)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # n small LAPACK calls: OpenMP hand-offs cost more than the work (25x on 2 busy cores)
    try:
        values = torch.cat([frechet_distance(fr[i], ff[i]) for i in idx.split(25)])  # 25 resamples: bounded memory
    finally:
        torch.set_num_threads(threads)
    centre = float(frechet_distance(fr, ff))
    half = float(torch.distributions.Normal(0, 1).icdf(torch.tensor((1 + level) / 2))) * float(values.std())
    return max(0.0, centre - half), centre + half


def load_clip(path_or_id, device: str = "cpu"):
    """(CLIPModel, CLIPProcessor) from a local folder or a cached hub id, for zero-shot judging and CLIPScore."""
    from transformers import CLIPModel, CLIPProcessor

    try:
        model, processor = CLIPModel.from_pretrained(str(path_or_id)), CLIPProcessor.from_pretrained(str(path_or_id))
    except (OSError, ValueError) as e:
        raise ValueError(f"could not load a CLIP model from {str(path_or_id)!r} ({e}); pass a folder saved with "
                         "CLIPModel/CLIPProcessor.save_pretrained or a hub id in the local cache") from e
    return model.eval().to(device), processor


@torch.no_grad()
def clip_zero_shot(clip, images: torch.Tensor, labels: list[str]) -> list[str]:
    """The label (of `labels`) whose text embedding is closest to each image's: CLIP zero-shot classification."""
    model, processor = clip
    device = next(model.parameters()).device
    inputs = processor(text=list(labels), images=[(x * 255).round().byte() for x in images], return_tensors="pt",
                       padding=True)
    logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits_per_image
    return [labels[i] for i in logits.argmax(1).tolist()]


class _TensorFeatures(torch.nn.Module):
    # transformers >= 5 returns an output object from get_*_features; torchmetrics' CLIPScore expects tensors
    def __init__(self, model):
        super().__init__()
        self.model = model
        self.config = model.config

    def get_image_features(self, *args, **kwargs):
        out = self.model.get_image_features(*args, **kwargs)
        return out if torch.is_tensor(out) else out.pooler_output

    def get_text_features(self, *args, **kwargs):
        out = self.model.get_text_features(*args, **kwargs)
        return out if torch.is_tensor(out) else out.pooler_output


def clip_score(clip, images: torch.Tensor, prompts: list[str]) -> float:
    """torchmetrics CLIPScore (100 × cosine similarity, floored at 0) of images [N,3,H,W] in [0,1] and prompts."""
    from torchmetrics.multimodal.clip_score import CLIPScore

    model, processor = clip
    metric = CLIPScore(model_name_or_path=lambda: (_TensorFeatures(model), processor))
    return float(metric((images * 255).round().to(torch.uint8), list(prompts)))


def _pairs(prompts, seeds):
    pairs = [(p, int(s)) for p in prompts for s in seeds]
    return [p for p, _ in pairs], [s for _, s in pairs]


FORGOT_BELOW = 0.2  # a run forgot when at most this share of forget-prompt images still shows the concept


def evaluate(base, unlearned, task, seeds=(0, 1), steps: int = DEFAULT_STEPS,
             guidance_scale: float = DEFAULT_GUIDANCE, lpips_net: str = "stlpips", lpips_size: int = LPIPS_SIZE,
             max_retain: int | None = None, cache_dir=None, classifier=None, fid: bool = True,
             lpips: LPIPSDistance | None = None, clip=None, batch_size: int | None = None,
             progress: bool | None = None, forgot_below: float = FORGOT_BELOW) -> dict:
    """Retention (LPIPS_ret, I), forgetting and accuracy of `unlearned` against `base` on `task`.

    Returns a dict: lpips_ret, integrity (= 1 − lpips_ret), lpips_ret_ci (95% bootstrap over prompts × seeds),
    lpips_forget, per_concept (lpips_ret per retain concept, neighbour first), lpips_neighbour and lpips_rest (LPIPS_ret
    on the neighbour concept's retain pairs and on the others, each with its `_ci`), retain_pairs (one dict per retain
    (prompt, seed) pair, in evaluation order: prompt, seed, concept, lpips), forget_rate, retain_accuracy (each
    with a 95% bootstrap `_ci`), base_forget_rate, base_retain_accuracy, fid (on classifier features; see
    fid_features) and fid_ci (see `fid_ci`), lpips_net, n_retain, n_forget and seconds. `max_retain` evaluates
    the first N retain prompts (neighbour prompts come first). `forgot` is True when forget_rate <= `forgot_below`
    (else a warning says so: integrity means little where nothing was forgotten); None without a judge.
    Outside the embedded world, pass `clip` (a path / hub id, or a (model, processor) pair) for forget_rate and
    retain_accuracy by CLIP zero-shot classification over the task's concepts, and clip_score (torchmetrics).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty; evaluate needs at least one seed, e.g. seeds=[0, 1]")
    start = time.time()
    lpips = lpips or LPIPSDistance(lpips_net, lpips_size)
    retain_prompts = task.retain_prompts[:max_retain] if max_retain else task.retain_prompts
    r_prompts, r_seeds = _pairs(retain_prompts, seeds)
    f_prompts, f_seeds = _pairs(task.forget_prompts, seeds)
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
    out = {"lpips_ret": float(d_r.mean()), "integrity": 1 - float(d_r.mean()),
           "lpips_ret_ci": bootstrap_ci(d_r), "lpips_forget": float(d_f.mean()),
           "lpips_forget_ci": bootstrap_ci(d_f), "lpips_net": lpips.name}
    concept = dict(zip(task.retain_prompts, task.retain_concepts)) if task.retain_concepts else {}
    out["retain_pairs"] = [{"prompt": p, "seed": s, "concept": concept.get(p, "retain"), "lpips": d}
                           for p, s, d in zip(r_prompts, r_seeds, d_r.tolist())]
    per = {}
    for pair in out["retain_pairs"]:
        per.setdefault(pair["concept"], []).append(pair["lpips"])
    out["per_concept"] = {k: sum(v) / len(v) for k, v in per.items()}
    # the paper's claim (a): the neighbour concept pays most. LPIPS_ret on its prompts and on the rest, with intervals
    near = torch.tensor([p["concept"] == task.neighbour_concept for p in out["retain_pairs"]])
    if task.neighbour_concept and near.any() and not near.all():
        for key, rows in (("lpips_neighbour", near), ("lpips_rest", ~near)):
            out[key], out[key + "_ci"] = float(d_r[rows].mean()), bootstrap_ci(d_r[rows])

    # forgetting and accuracy: the concept classifier on the embedded world
    if task.kind in world.KINDS and all(_is_world(p) for p in retain_prompts + task.forget_prompts[:1]):
        from .classifier import load_classifier

        clf = classifier or load_classifier()
        pred_r, truth_r = clf.predict(new_r), [world.parse(p) for p in r_prompts]
        hit_f = forget_hits(new_f, task, classifier=clf)
        hit_r = [p == t for p, t in zip(pred_r, truth_r)]
        out["forget_rate"] = sum(hit_f) / len(hit_f)
        out["retain_accuracy"] = sum(hit_r) / len(pred_r)
        out["forget_rate_ci"] = bootstrap_ci(torch.tensor(hit_f, dtype=torch.float32))
        out["retain_accuracy_ci"] = bootstrap_ci(torch.tensor(hit_r, dtype=torch.float32))
        base_hit_f, base_pr = forget_hits(base_f, task, classifier=clf), clf.predict(base_r)
        out["base_forget_rate"] = sum(base_hit_f) / len(base_hit_f)
        out["base_retain_accuracy"] = sum(p == t for p, t in zip(base_pr, truth_r)) / len(base_pr)
        if fid:
            # real images: renders of the same retain prompts with the same evaluation seeds
            real = world.render_batch(r_prompts, r_seeds, resolution=new_r.shape[-1])
            out["fid"] = classifier_fid(clf, real, new_r)
            out["fid_ci"] = fid_ci(clf, real, new_r)
            out["fid_features"] = "concept classifier (128-d penultimate layer), not Inception"
    elif clip is not None and task.forget_concept and task.retain_concepts:
        clip = load_clip(clip) if isinstance(clip, (str, Path)) else clip
        concept = dict(zip(task.retain_prompts, task.retain_concepts))
        labels = [task.forget_concept, *dict.fromkeys(task.retain_concepts)]
        for prefix, (f_img, r_img) in (("", (new_f, new_r)), ("base_", (base_f, base_r))):
            hit_f, pred_r = forget_hits(f_img, task, clip=clip), clip_zero_shot(clip, r_img, labels)
            hit_r = [p == concept[q] for p, q in zip(pred_r, r_prompts)]
            out[prefix + "forget_rate"] = sum(hit_f) / len(hit_f)
            out[prefix + "retain_accuracy"] = sum(hit_r) / len(pred_r)
            out[prefix + "forget_rate_ci"] = bootstrap_ci(torch.tensor(hit_f, dtype=torch.float32))
            out[prefix + "retain_accuracy_ci"] = bootstrap_ci(torch.tensor(hit_r, dtype=torch.float32))
        out["clip_score"] = clip_score(clip, new_r, r_prompts)
    out.update(n_retain=len(r_prompts), n_forget=len(f_prompts), seeds=seeds, steps=steps,
               guidance_scale=guidance_scale, seconds=time.time() - start)
    out["forgot"] = None if "forget_rate" not in out else out["forget_rate"] <= forgot_below
    if out["forgot"] is False and out.get("base_forget_rate", 1.0) > forgot_below:
        warnings.warn(did_not_forget(out["forget_rate"], forgot_below), stacklevel=2)
    return out


def classifier_judges(task) -> bool:
    """Whether the concept classifier can judge `task`'s forgetting: it forgets a concept of the embedded world."""
    return task.forget_concept in world.KINDS.get(task.kind, ())


def forget_hits(images: torch.Tensor, task, classifier=None, clip=None) -> list[bool]:
    """Per image, whether it still shows `task.forget_concept`: the concept classifier on the embedded world's
    concepts, else CLIP zero-shot over the task's concepts (`clip`: a model from `load_clip`, or its path / hub id)."""
    if classifier_judges(task):
        from .classifier import load_classifier

        clf = classifier or load_classifier()
        return [p[task.kind] == task.forget_concept for p in clf.predict(images)]
    if clip is None:
        raise ValueError(f"task {task.name!r} is not on the embedded world: pass clip=<a CLIP model path or hub id> "
                         "to judge its images by zero-shot classification")
    clip = load_clip(clip) if isinstance(clip, (str, Path)) else clip
    labels = [task.forget_concept, *dict.fromkeys(task.retain_concepts)]
    return [p == task.forget_concept for p in clip_zero_shot(clip, images, labels)]


def did_not_forget(forget_rate: float, threshold: float = None) -> str:
    """The warning for a run whose forget rate stayed above the threshold."""
    threshold = FORGOT_BELOW if threshold is None else threshold
    return (f"did not forget: forget rate {forget_rate:.2f} (> {threshold:.2f}); its retention numbers say nothing "
            "about the cost of forgetting — train longer, raise lr, or try another method")


def _is_world(p: str) -> bool:
    try:
        world.parse(p)
        return True
    except ValueError:
        return False


def format_ci(value: float, ci, digits: int = 3) -> str:
    """'0.023 [0.020, 0.027]': a value with its interval, as every table of the kit prints them."""
    lo, hi = ci
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def results_table(results: dict[str, dict], path: str | Path | None = None) -> str:
    """Table 1: methods × metrics as Markdown (returned); with `path`, also writes `path`.md and `path`.csv."""
    cols = [("FID (clf)", "fid", "{:.2f}"), ("accuracy", "retain_accuracy", "{:.3f}"),
            ("forget rate", "forget_rate", "{:.3f}"), ("LPIPS_ret", "lpips_ret", "{:.3f}"),
            ("I", "integrity", "{:.3f}"), ("LPIPS_ret neighbour", "lpips_neighbour", "{:.3f}"),
            ("LPIPS_ret rest", "lpips_rest", "{:.3f}"), ("LPIPS_forget", "lpips_forget", "{:.3f}")]
    lines = ["| method | " + " | ".join(c for c, _, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    csv = ["method," + ",".join(k for _, k, _ in cols) + ",lpips_ret_lo,lpips_ret_hi"]
    for method, r in results.items():
        cells = []
        for _, key, fmt in cols:
            v = r.get(key)
            cell = "—" if v is None else fmt.format(v)
            if key in ("lpips_ret", "lpips_neighbour", "lpips_rest") and v is not None:
                cell = format_ci(v, r[key + "_ci"])
            if key == "integrity" and v is not None:
                lo, hi = r["lpips_ret_ci"]
                cell += f" [{1 - hi:.3f}, {1 - lo:.3f}]"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
        csv.append(method + "," + ",".join("" if r.get(k) is None else f"{r[k]:.6g}" for _, k, _ in cols)
                   + ",{:.6g},{:.6g}".format(*r["lpips_ret_ci"]))
    net = next(iter(results.values())).get("lpips_net", "?") if results else "?"
    md = "\n".join(lines) + f"\n\nLPIPS network: {net}. Intervals: 95% bootstrap over prompts × seeds.\n"
    if path:
        from .io import atomic_write

        path = Path(path)
        atomic_write(path.with_suffix(".md"), lambda t: Path(t).write_text(md))
        atomic_write(path.with_suffix(".csv"), lambda t: Path(t).write_text("\n".join(csv) + "\n"))
    return md
