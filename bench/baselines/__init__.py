"""Baselines that ``fastlora bench`` measures fastlora against, in the same run.

Installed as ``fastlora.baselines`` (setup.py maps ``bench/baselines`` there), so the
benchmark harness works from any installation.
"""
from .dense_als import dense_als
from .paper_gd import meta_objective, paper_gd
from .paper_shallow import paper_shallow

__all__ = ["dense_als", "meta_objective", "paper_gd", "paper_shallow"]
