"""Evaluation entry points used by the CLI (the lead adds run_eval here)."""
from trainer.scoring import score_predictions_file  # noqa: F401
