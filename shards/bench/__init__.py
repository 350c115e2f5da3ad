"""Benchmarks of the data floor (``rrg bench loader|build``) and the dataset trees they read."""
