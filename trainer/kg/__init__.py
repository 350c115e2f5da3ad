"""Knowledge-graph data jobs (issue 9, R2GenKG): ``rrg kg build`` and ``rrg kg attach``.

* :mod:`trainer.kg.extract` - entity/relation extraction from report sentences (rule backend on the
  labeler's mention + negation engine, or a local Hugging Face directory);
* :mod:`trainer.kg.graph` - the KG built from TRAINING-split reports only, saved as the ``kg`` asset;
* :mod:`trainer.kg.bank` - the disease-aware vision-token bank (Grad-CAM of a light 14-label classifier);
* :mod:`trainer.kg.attach` - per-study multi-scale subgraph tensors as the ``kg`` sidecar.

The names these jobs share with the family (assets, sidecar, relations, node types) are defined once, in
modeling/families/r2genkg/constants.py; this package module stays light (``KGError`` is resolved by
trainer/runguard.py's table of known errors).
"""


class KGError(RuntimeError):
    """Bad KG input (entity-free reports, a study without neighbours, a corrupt kg sidecar): names the study."""
