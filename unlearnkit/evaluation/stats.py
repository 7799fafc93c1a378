"""Intervals: the percentile bootstrap of a mean, a rate with its Wilson interval, a rate resampled by seed, and how
every table prints them."""

from __future__ import annotations

import torch


def bootstrap_ci(values: torch.Tensor, n: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (resampling the prompt × seed pairs)."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(values), (n, len(values)), generator=g)
    means = values[idx].mean(1)
    lo, hi = torch.quantile(means, torch.tensor([(1 - level) / 2, (1 + level) / 2])).tolist()
    return lo, hi


def format_ci(value: float, ci, digits: int = 3) -> str:
    """'0.023 [0.020, 0.027]': a value with its interval, as every table of the kit prints them."""
    lo, hi = ci
    return f"{value:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def wilson_ci(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of k hits in n trials (METHODS.md eq. 28b)."""
    if n <= 0:
        raise ValueError("wilson_ci needs at least one judged image")
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5 / (1 + z * z / n)
    # the interval holds its point exactly: in floats, centre - half at k = 0 can come out a hair above 0
    # (0 of 11: 2.8e-17) and centre + half at k = n a hair below 1 (6 of 6: 0.9999999999999999)
    return max(0.0, min(p, centre - half)), min(1.0, max(p, centre + half))


def rate_ci(hits, z: float = 1.96) -> tuple[float, tuple[float, float]]:
    """(share of True, its 95% Wilson score interval) of a list of booleans: a forget rate or an accuracy.

    Wilson's, not the bootstrap's: a rate of 0 or 1 gets an interval of nonzero width (0 of 30 images: [0, 0.114]),
    so a stopping check and an evaluation can be compared by their intervals."""
    hits = [bool(h) for h in hits]
    if not hits:
        raise ValueError("rate_ci needs at least one judged image")
    return sum(hits) / len(hits), wilson_ci(sum(hits), len(hits), z)


def seed_bootstrap_ci(hits_per_seed, n: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of a rate whose images come in seed groups, resampling the *seeds*.

    `hits_per_seed`: one list of booleans per seed (that seed's image of each prompt). Every prompt's image at a seed
    starts from the same initial noise (`sampling.initial_noise`), so a seed's images rise and fall together and the
    unit of independent evidence is the seed, not the image: Wilson's interval over all images (`rate_ci`) is too
    narrow when seeds differ. With few seeds the bootstrap understates the spread too (two seeds that happen to agree
    give a narrow interval; one seed, a point): read it beside the number of seeds. OVW on *red*, cpu profile: seed
    rates from 0 to 12 of 30 (`bench/forget-seeds-red-ovw.json`), so 2 or 4 seeds decide nothing near 0.2."""
    groups = [[bool(h) for h in hs] for hs in hits_per_seed]
    if not groups or any(not hs for hs in groups):
        raise ValueError("seed_bootstrap_ci needs at least one seed, each with at least one judged image")
    k = torch.tensor([sum(hs) for hs in groups], dtype=torch.float64)
    m = torch.tensor([len(hs) for hs in groups], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, len(groups), (n, len(groups)), generator=g)
    rates = k[idx].sum(1) / m[idx].sum(1)
    lo, hi = torch.quantile(rates, torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)).tolist()
    return lo, hi
