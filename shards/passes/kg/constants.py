"""R2GenKG's data names, one definition for the family (modeling) and the KG jobs (shards/passes/kg); no torch here."""

# the dataset assets `rrg kg build` writes, and the per-study sidecar `rrg kg attach` writes
KG_ASSET, BANK_ASSET, KG_SIDECAR = "kg", "kg_bank", "kg"
RELATIONS = ("located_at", "modify", "suggestive_of")  # KG edge types, in edge_type order
NODE_TYPES = ("finding", "anatomy", "modifier")  # KG node types, in node_type order
