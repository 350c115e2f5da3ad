"""LLaVA-Rad: the shared VLM (modeling/vlm.py) as it is."""
from modeling.families.llava_rad import family  # noqa: F401  (registers "llava_rad")
