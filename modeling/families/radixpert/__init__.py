"""Radixpert: anatomical mask fusion into the vision tokens."""
from modeling.families.radixpert import family  # noqa: F401  (registers "radixpert")
