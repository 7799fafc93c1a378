"""CLIP: loading a local model, zero-shot classification and CLIPScore (torchmetrics)."""

from __future__ import annotations

import torch


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
