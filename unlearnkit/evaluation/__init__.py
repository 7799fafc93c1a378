"""Evaluation: what an unlearned model did, measured. Above the core; the core never imports it.

lpips (LPIPS and its maps), stats (bootstrap intervals), fid and clip, judges (does an image still show the
concept), suite (`evaluate`, the retention metric I), tables (Table 1), stopping (rules the loop is handed),
classifier (the embedded world's concept classifier), attacks, probes, sequence (several erasures in order), claims (the paper's claims judged from the numbers),
report and report_page (the integrity report of two checkpoints: `uk.report`, not imported here, as its module and
its function share the name).
"""

from .attacks import attack
from .classifier import load_classifier
from .clip import clip_score, clip_zero_shot, load_clip
from .fid import classifier_fid, fid_ci, frechet_distance
from .judges import FORGOT_BELOW, DidNotForget, classifier_judges, did_not_forget, forget_hits
from .lpips import LPIPS_NETS, LPIPS_SIZE, LPIPSDistance
from .sequence import unlearn_sequence
from .stats import bootstrap_ci, format_ci, rate_ci, seed_bootstrap_ci, wilson_ci
from .stopping import CHECK_BELOW, CHECK_SEEDS, UntilForgotten, until_forgotten
from .suite import Evaluation, evaluate
from .tables import results_table

__all__ = ["attack", "load_classifier", "clip_score", "clip_zero_shot", "load_clip", "classifier_fid", "fid_ci",
           "frechet_distance", "FORGOT_BELOW", "DidNotForget", "classifier_judges", "did_not_forget", "forget_hits", "LPIPS_NETS",
           "LPIPS_SIZE", "LPIPSDistance", "unlearn_sequence", "bootstrap_ci", "format_ci", "rate_ci", "seed_bootstrap_ci", "wilson_ci", "CHECK_BELOW",
           "CHECK_SEEDS", "UntilForgotten", "until_forgotten", "Evaluation", "evaluate", "results_table"]
