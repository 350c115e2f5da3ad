"""Report labelers: turn report text into clinical labels (CE scores, data preparation, knowledge graphs).

They sit in the shards floor because data-preparation steps (dataset adapters, annotators, the
knowledge-graph builder) need the mention / negation engine as much as evaluation does.

* ``rrg`` (:mod:`.rule_en`): English rule labeler, CheXpert-14 (label set ``chexpert``);
* ``rrg_es`` (:mod:`.rule_es`): Spanish PadChest rule labeler (label set ``padchest``);
* ``chexbert`` (:mod:`.chexbert`): the CheXbert architecture from a local checkpoint (``chexpert``).

File input and ``rrg label`` live in :mod:`.files`.
"""
from shards.labeling.registry import (LABELERS, LabelInputError, Labels, Truncation, check_reports, label_set_of,
                                      make_labeler, resolve_labeler)
from shards.labeling.rule_en import RuleLabeler, explain_report, label_report, label_sentence_mentions, sentences
from shards.labeling.rule_es import SpanishRuleLabeler, label_report_es
from shards.labeling.chexbert import CheXbertLabeler
from shards.labeling.files import label_file, read_reports

__all__ = ["LABELERS", "LabelInputError", "Labels", "Truncation", "check_reports", "label_set_of", "make_labeler",
           "resolve_labeler", "RuleLabeler", "explain_report", "label_report", "label_sentence_mentions", "sentences",
           "SpanishRuleLabeler", "label_report_es", "CheXbertLabeler", "label_file", "read_reports"]
