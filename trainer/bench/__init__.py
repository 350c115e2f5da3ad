"""Benchmarks of the trainer floor (``rrg bench train|checkpoint|packing|eval|gpu``), side-by-side ratios."""
