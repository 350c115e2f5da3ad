"""LLaVA-Rad (``llava_rad``): the shared VLM of modeling/vlm.py as it is, registered.

SigLIP/CLIP encoder -> MLP projector -> the patch embeddings spliced into a causal LM at the prompt's
``<image>``; the loss is on the report tokens.  Everything it does is :class:`modeling.vlm.VLMFamily`'s
(the base that radixpert, llava_ta and lvmed_r2 extend); this module only names it.
"""
from __future__ import annotations

from modeling.family import FAMILIES
from modeling.vlm import VLM, VLMFamily


class LlavaRad(VLM):
    """vision encoder + projector + HF causal LM (modeling/vlm.py)."""

    family_name = "llava_rad"


@FAMILIES.register("llava_rad")
class LlavaRadFamily(VLMFamily):
    """SigLIP/CLIP encoder + MLP projector + causal LM, prompt ``<image>\\n{prompt}\\n``, report loss."""

    name = "llava_rad"
    model_class = LlavaRad
