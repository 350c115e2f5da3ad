"""The shipped model families, one package each (modeling/family.py: the contract and the registry).

Every subpackage here is imported by :func:`modeling.family.import_families`; its ``__init__.py`` imports the
module(s) that register its families (``@FAMILIES.register("name")``), and family-only helpers live beside
them.  A user's own family packages live outside the checkout, in the directories of ``RRG_FAMILY_PATH``.
Shared machinery (vision encoders, the VLM base, attention, packing, tuning) stays in ``modeling/``.
"""
