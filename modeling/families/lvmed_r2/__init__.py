"""LVMed-R2: reason before reporting, reflect on and correct one's own perception."""
from modeling.families.lvmed_r2 import family  # noqa: F401  (registers "lvmed_r2")
