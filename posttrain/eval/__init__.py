"""Evaluation: held-out sampling, reward and KL of a policy (``policy``), and the demo's HTML/PNG
report with its headless-browser check (``report``, needs matplotlib)."""

from .policy import evaluate_policy

__all__ = ["evaluate_policy"]
