"""The concept classifier: CLIP's role on the embedded world (forget efficacy, accuracy, FID features).

A small CNN with one head per concept kind, trained on renders with blur and pixel noise so it also
reads the imperfect images a small diffusion model draws.
"""

from __future__ import annotations

import json
import random
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .. import world
from ..world import TRAIN_SEEDS
from ..io import atomic_write

ASSET = Path(__file__).parents[1] / "assets" / "classifier.safetensors"
FEATURE_DIM = 128


class ConceptClassifier(nn.Module):
    """CNN over [N,3,32,32] images in [0,1]; `predict` names the object, colour and style of each image."""

    def __init__(self, width: int = 32):
        super().__init__()

        def block(i, o):
            return nn.Sequential(nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU(),
                                 nn.Conv2d(o, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU())

        self.body = nn.Sequential(block(3, width), nn.MaxPool2d(2), block(width, 2 * width), nn.MaxPool2d(2),
                                  block(2 * width, 4 * width), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.proj = nn.Linear(4 * width, FEATURE_DIM)
        self.heads = nn.ModuleDict({k: nn.Linear(FEATURE_DIM, len(v)) for k, v in world.KINDS.items()})

    def _check(self, images: torch.Tensor):
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [N, 3, H, W] RGB in [0, 1], got shape {tuple(images.shape)}")

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [N, 128] (used as FID features on the embedded world)."""
        self._check(images)
        if images.shape[-1] != world.RESOLUTION or images.shape[-2] != world.RESOLUTION:
            images = F.interpolate(images, size=(world.RESOLUTION, world.RESOLUTION), mode="bilinear",
                                   antialias=True, align_corners=False)
        return F.relu(self.proj(self.body(images * 2 - 1)))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits per kind: {'object': [N,6], 'colour': [N,5], 'style': [N,5]}."""
        f = self.features(images)
        return {k: head(f) for k, head in self.heads.items()}

    @torch.no_grad()
    def predict(self, images: torch.Tensor, batch_size: int = 256) -> list[dict[str, str]]:
        """The concept words of each image: a list of {'object', 'colour', 'style'}."""
        self.eval()
        device = next(self.parameters()).device
        out = []
        for i in range(0, len(images), batch_size):
            logits = self(images[i:i + batch_size].to(device).float())
            idx = {k: v.argmax(1).tolist() for k, v in logits.items()}
            out += [{k: world.KINDS[k][idx[k][j]] for k in world.KINDS} for j in range(len(idx["object"]))]
        return out


def _augment(images: torch.Tensor) -> torch.Tensor:
    """Renders made to look like a small diffusion model's drawings, as CLIP tolerates photos' variations.

    Blur, pixel noise and blotchy (low-resolution) colour noise up to ~0.3 std, and mild brightness,
    contrast and saturation shifts that keep each colour on its side of the others.
    """
    n = len(images)
    u = lambda *shape: torch.rand(n, *shape)  # noqa: E731
    soft = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    images = torch.where(u(1, 1, 1) < 0.5, images + (soft - images) * u(1, 1, 1) * 0.7, images)
    grey = images.mean(1, keepdim=True)
    images = grey + (images - grey) * (0.75 + 0.4 * u(1, 1, 1))  # saturation
    images = (images - 0.5) * (0.8 + 0.35 * u(1, 1, 1)) + 0.5 + (u(1, 1, 1) - 0.5) * 0.16  # contrast, brightness
    images = images + torch.randn_like(images) * u(1, 1, 1) * 0.25
    blotch = F.interpolate(torch.randn(n, 3, 8, 8), size=images.shape[-2:], mode="bilinear", align_corners=False)
    images = images + blotch * u(1, 1, 1) * 0.12
    return images.clamp(0, 1)


def train_classifier(steps: int = 1500, batch_size: int = 128, lr: float = 2e-3, seed: int = 0,
                     progress: bool = True) -> ConceptClassifier:
    """Train a classifier on fresh renders (seeds below TRAIN_SEEDS); returns it in eval mode."""
    random.seed(seed)
    torch.manual_seed(seed)
    model = ConceptClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for _ in tqdm(range(steps), disable=not progress, desc="classifier"):
        combos = [(random.choice(world.OBJECTS), random.choice(world.COLOURS), random.choice(world.STYLES))
                  for _ in range(batch_size)]
        images = world.render_batch([world.prompt(*c) for c in combos],
                                    [random.randrange(TRAIN_SEEDS) for _ in combos])
        logits = model(_augment(images))
        loss = sum(F.cross_entropy(logits[k], torch.tensor([world.KINDS[k].index(c[i]) for c in combos]))
                   for i, k in enumerate(world.KINDS))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def save_classifier(model: ConceptClassifier, path: str | Path = ASSET) -> None:
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, tmp, metadata={"vocab": json.dumps(world.KINDS)}))


def load_classifier(path: str | Path = ASSET, device: str = "cpu") -> ConceptClassifier:
    """The shipped concept classifier (or one saved with `save_classifier`), in eval mode."""
    path = Path(path)
    if not path.exists():
        raise ValueError(f"classifier weights {str(path)!r} are missing; reinstall unlearnkit or train one with "
                         "unlearnkit.evaluation.classifier.train_classifier()")
    model = ConceptClassifier()
    try:
        state = load_file(str(path))
    except Exception as e:
        raise ValueError(f"classifier weights {str(path)!r} are corrupt ({e}); reinstall unlearnkit") from e
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{str(path)!r} holds another model's weights (missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}); pass a classifier saved by unlearnkit")
    return model.to(device).eval()


@torch.no_grad()
def accuracy_on_renders(model: ConceptClassifier, per_prompt: int = 4, seed_offset: int = TRAIN_SEEDS + 1) -> dict:
    """Accuracy per kind (and all three at once) on fresh renders with seeds never used in training."""
    prompts = world.all_prompts()
    pairs = [(p, seed_offset + 1000 * i + j) for i, p in enumerate(prompts) for j in range(per_prompt)]
    images = world.render_batch([p for p, _ in pairs], [s for _, s in pairs])
    preds = model.predict(images)
    truth = [world.parse(p) for p, _ in pairs]
    acc = {k: sum(pr[k] == t[k] for pr, t in zip(preds, truth)) / len(pairs) for k in world.KINDS}
    acc["all"] = sum(pr == t for pr, t in zip(preds, truth)) / len(pairs)
    acc["n"] = len(pairs)
    return acc


if __name__ == "__main__":  # python -m unlearnkit.evaluation.classifier: retrain and ship the classifier
    t = time.time()
    clf = train_classifier()
    print(accuracy_on_renders(clf), f"{time.time() - t:.0f}s")
    save_classifier(clf)
