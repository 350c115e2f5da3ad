"""R2GenKG: image + vision-token bank + per-study KG subgraphs (blocks in kg_modules.py, data names in constants.py)."""
from modeling.families.r2genkg import family  # noqa: F401  (registers "r2genkg")
