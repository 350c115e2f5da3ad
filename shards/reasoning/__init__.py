"""LVMed-R2 data side: shipped ontology, perception tree asset, reasoning/reflection chains (pure text)."""
