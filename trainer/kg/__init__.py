"""Knowledge-graph data jobs (issue 9, R2GenKG): ``rrg kg build`` and ``rrg kg attach``.

* :mod:`trainer.kg.extract` - entity/relation extraction from report sentences (rule backend on the
  labeler's mention + negation engine, or a local Hugging Face directory);
* :mod:`trainer.kg.graph` - the KG built from TRAINING-split reports only, saved as the ``kg`` asset;
* :mod:`trainer.kg.bank` - the disease-aware vision-token bank (Grad-CAM of a light 14-label classifier);
* :mod:`trainer.kg.attach` - per-study multi-scale subgraph tensors as the ``kg`` sidecar.
"""

KG_ASSET, BANK_ASSET, KG_SIDECAR = "kg", "kg_bank", "kg"
RELATIONS = ("located_at", "modify", "suggestive_of")
NODE_TYPES = ("finding", "anatomy", "modifier")


class KGError(RuntimeError):
    """Bad KG input (entity-free reports, a study without neighbours, a corrupt kg sidecar): names the study."""
