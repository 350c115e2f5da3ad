"""LLaVA-TA and LLaVA-T: per-topic report generation (topic rows in topic_rows.py)."""
from modeling.families.llava_ta import family  # noqa: F401  (registers "llava_ta" and "llava_t")
