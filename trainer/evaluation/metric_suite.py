"""The model-based and leaderboard metrics of one evaluation, per study (the caller averages and bootstraps).

:class:`MetricSuite` is built once per evaluation from the ``eval`` section (models load on first
use and are reused for the model, the retrieval baseline, ablations, variants and the narrative-bias
rows).  ``suite.per_study(records)`` returns ``(values, status)``: ``values[key]`` is one float per
record, ``status[key]`` says why a metric was not computed (never a 0 in its place).

Keys (all means over studies; see trainer/evaluation/radgraph.py and text_metrics.py for conventions):

* ``rouge_1``, ``rouge_2``, ``rouge_l_f1`` -- rouge_score F-measures (RadEval, LLaVA-Rad); no model;
* ``radgraph_simple_f1``, ``radgraph_partial_f1``, ``radgraph_complete_f1`` -- F1-RadGraph reward levels
  (LLaVA-Rad reports ``partial`` as F1-RadGraph / RG_ER), ``radgraph_combined_f1`` -- ReXrank's RadGraph;
* ``bertscore_precision|recall|f1`` -- ReXrank convention; ``bertscore_llava_rad_f1`` -- LLaVA-Rad's;
* ``semb_score`` -- CheXbert embedding cosine (ReXrank SembScore);
* ``radcliq_v1`` -- per-study RadCliQ-v1 (lower is better; needs RadGraph, BERTScore and SembScore);
  the scorer adds ``radcliq_v1_inv`` = 1 / mean, ReXrank's ranking figure;
* ``green`` -- GREEN score.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

RADGRAPH_KEYS = ("radgraph_simple_f1", "radgraph_partial_f1", "radgraph_complete_f1", "radgraph_combined_f1")
BERTSCORE_KEYS = ("bertscore_precision", "bertscore_recall", "bertscore_f1")
MODEL_KEYS = RADGRAPH_KEYS + BERTSCORE_KEYS + ("bertscore_llava_rad_f1", "semb_score", "radcliq_v1", "green")
ROUGE_KEYS = ("rouge_1", "rouge_2", "rouge_l_f1")
LOWER_IS_BETTER = ("radcliq_v1",)


def rouge_per_study(records: Sequence[dict]) -> dict[str, list[float]]:
    from trainer.evaluation.text_metrics import rouge_scores

    rows = [rouge_scores(r["reference"], r["generated"]) for r in records]
    return {k: [row[k] for row in rows] for k in ROUGE_KEYS}


class MetricSuite:
    """Model-based metrics from ``eval`` config sections (plain objects with the metric_config fields)."""

    def __init__(self, radgraph=None, bertscore=None, bertscore_llava_rad=None, semb=None, green=None,
                 labeler: str = "rrg", labeler_args: Optional[dict] = None, device: str = "cpu"):
        from trainer.evaluation.metric_config import (BertScoreConfig, GreenConfig, RadGraphConfig, SembConfig,
                                                      llava_rad_bertscore)

        self.rg_cfg = radgraph or RadGraphConfig()
        self.bs_cfg = bertscore or BertScoreConfig()
        self.bsl_cfg = bertscore_llava_rad or llava_rad_bertscore()
        self.semb_cfg = semb or SembConfig()
        if not self.semb_cfg.checkpoint and labeler == "chexbert":  # the CheXbert checkpoint rrg already reads
            args = labeler_args or {}
            self.semb_cfg = SembConfig(checkpoint=args.get("checkpoint", args.get("path", "")),
                                       tokenizer=args.get("tokenizer", ""))
        self.green_cfg = green or GreenConfig()
        self.device = device
        self._models: dict[str, Any] = {}

    @classmethod
    def from_eval(cls, ev, device: str = "cpu") -> "MetricSuite":
        return cls(ev.radgraph, ev.bertscore, ev.bertscore_llava_rad, ev.semb, ev.green, ev.labeler,
                   dict(ev.labeler_args), device=device)

    def unset(self) -> dict[str, str]:
        """{key: reason} for every metric whose model is not configured."""
        out = {}
        if not self.rg_cfg.model_dir:
            out.update({k: "not computed: eval.radgraph.model_dir is unset" for k in RADGRAPH_KEYS})
        if not self.bs_cfg.model_dir:
            out.update({k: "not computed: eval.bertscore.model_dir is unset" for k in BERTSCORE_KEYS})
        if not self.bsl_cfg.model_dir:
            out["bertscore_llava_rad_f1"] = "not computed: eval.bertscore_llava_rad.model_dir is unset"
        if not (self.semb_cfg.checkpoint and self.semb_cfg.tokenizer):
            out["semb_score"] = "not computed: eval.semb.checkpoint is unset"
        missing = [name for name, ok in (("eval.radgraph.model_dir", self.rg_cfg.model_dir),
                                         ("eval.bertscore.model_dir", self.bs_cfg.model_dir),
                                         ("eval.semb.checkpoint", self.semb_cfg.checkpoint)) if not ok]
        if missing:
            out["radcliq_v1"] = f"not computed: needs RadGraph, BERTScore and SembScore ({', '.join(missing)} unset)"
        if not self.green_cfg.model_dir:
            out["green"] = "not computed: eval.green.model_dir is unset"
        return out

    def _model(self, name: str):
        if name not in self._models:
            if name == "radgraph":
                from trainer.evaluation.radgraph import RadGraph

                c = self.rg_cfg
                self._models[name] = RadGraph(c.model_dir, encoder_dir=c.encoder_dir, device=self.device, case=c.case)
            elif name in ("bertscore", "bertscore_llava_rad"):
                from trainer.evaluation.text_metrics import BertScorer

                c = self.bs_cfg if name == "bertscore" else self.bsl_cfg
                self._models[name] = BertScorer(c.model_dir, model_type=c.model_type, num_layers=c.num_layers,
                                                rescale_with_baseline=c.rescale_with_baseline, idf=c.idf,
                                                batch_size=c.batch_size, device=self.device, key=f"eval.{name}")
            elif name == "semb":
                from shards.labeling.chexbert import CheXbertLabeler

                self._models[name] = CheXbertLabeler(checkpoint=self.semb_cfg.checkpoint,
                                                     tokenizer=self.semb_cfg.tokenizer)
            elif name == "green":
                from trainer.evaluation.green import Green

                c = self.green_cfg
                self._models[name] = Green(c.model_dir, batch_size=c.batch_size, max_length=c.max_length)
        return self._models[name]

    @property
    def radgraph_model_type(self) -> Optional[str]:
        return self._model("radgraph").layout.model_type if self.rg_cfg.model_dir else None

    def per_study(self, records: Sequence[dict], keep_responses: bool = True) -> tuple[dict[str, list[float]], dict[str, str]]:
        from trainer.evaluation.text_metrics import bleu2_sentence, radcliq_bleu_tokens, radcliq_v1, semb_scores

        hyps = [r["generated"] for r in records]
        refs = [r["reference"] for r in records]
        status = self.unset()
        values: dict[str, list[float]] = rouge_per_study(records)
        if "radgraph_partial_f1" not in status:
            rows = self._model("radgraph").scores(hyps, refs)
            for level in ("simple", "partial", "complete", "combined"):
                values[f"radgraph_{level}_f1"] = [row[level] for row in rows]
        if "bertscore_f1" not in status:
            values.update(self._model("bertscore").score(hyps, refs))
        if "bertscore_llava_rad_f1" not in status:
            values["bertscore_llava_rad_f1"] = self._model("bertscore_llava_rad").score(hyps, refs)["bertscore_f1"]
        if "semb_score" not in status:
            values["semb_score"] = semb_scores(self._model("semb"), hyps, refs)
        if "radcliq_v1" not in status:
            bleu = [bleu2_sentence(radcliq_bleu_tokens(r), radcliq_bleu_tokens(h)) for r, h in zip(refs, hyps)]
            values["radcliq_v1"] = [radcliq_v1(a, b, c, d) for a, b, c, d in
                                    zip(values["radgraph_combined_f1"], values["bertscore_f1"], values["semb_score"], bleu)]
        if "green" not in status:
            scores, responses = self._model("green")(hyps, refs)
            values["green"] = scores
            if keep_responses:
                for r, text in zip(records, responses):
                    r["green_analysis"] = text
        return values, status
