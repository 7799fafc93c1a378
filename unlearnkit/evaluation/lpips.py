"""LPIPS between image batches and its spatial maps: the distance the retention metric averages (docs/METHODS.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
