"""The topics pass: LLaVA-TA's per-topic sentences of each training report (``rrg annotate topics``,
annotate.py; rule decomposition in decompose.py or a local LM) and the topic ontology asset (ontology.py)."""
from shards.passes import ANNOTATE, Command, DataPass, register
from shards.passes.topics.config import TopicsConfig


class TopicAnnotationError(RuntimeError):
    """Too many studies fell back to the rule backend."""


PASS = register(DataPass(
    name="topics", summary="LLaVA-TA topic overlay of the training reports (rrg annotate topics)", config=TopicsConfig,
    errors=(("shards.passes.topics:TopicAnnotationError", 3),),
    commands=(Command(ANNOTATE, "topics", "LLaVA-TA topic overlay (training split) + topic ontology asset",
                      "shards.passes.topics.annotate:command"),)))
