"""The one setup call at the top of every notebook: `P, base, lpips = setup(profile, device)`."""

from __future__ import annotations

import os

from ..experiments.profiles import Profile
from ..experiments.profiles import profile as get_profile


def profile(name: str = "cpu") -> Profile:
    """The named profile; $UNLEARNKIT_PROFILE overrides it (the tests run every notebook on 'smoke')."""
    return get_profile(os.environ.get("UNLEARNKIT_PROFILE", name))


def setup(profile_name: str = "cpu", device: str = "auto"):
    """(P, base, lpips): the profile, the shipped base model on `device` ('auto': cuda if there is a GPU),
    and the LPIPS distance of the retention metric (shift-tolerant LPIPS, offline)."""
    from ..evaluation.lpips import LPIPSDistance
    from ..models import load_base

    P = profile(profile_name)
    base = load_base(device=device)
    per_method = f"; per method {P.method_settings}" if P.method_settings else ""
    print(f"profile {P.name}: {P.method_overrides or 'method defaults'}{per_method}; evaluation {P.evaluation}; "
          f"base on {base.device}")
    return P, base, LPIPSDistance().to(base.device)
