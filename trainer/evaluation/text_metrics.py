"""Leaderboard metrics that need a local model or a fixed formula: BERTScore, SembScore, RadCliQ-v1, ROUGE-1/2/L.

Every model is read from a local directory (``save_pretrained`` layout); nothing is downloaded.

**BERTScore** (Zhang et al. 2020; Tiiiger/bert_score ``utils.py`` / ``scorer.py``, re-implemented):
each text is encoded alone (``tokenizer(text.strip())`` with special tokens, truncated to the
tokenizer's ``model_max_length``; RoBERTa/GPT-2 tokenizers with ``add_prefix_space=True``; an empty
text is ``[CLS] [SEP]``), the hidden states after layer ``num_layers`` are L2-normalised, and pairs
are matched greedily in batches of 64 exactly as ``bert_cos_score_idf`` pads them (padded positions
count as similarity 0): P = mean over candidate tokens of the best reference match, R the other way,
special tokens weighted 0 (``idf=False``) or idf-weighted over the references (``idf=True``), F =
2PR/(P+R) (NaN -> 0; an empty side gives P = R = 0).  With ``rescale_with_baseline`` each of P, R,
F becomes ``(x - b) / (1 - b)`` with the published baseline ``b`` of that model and layer
(bert_score ``rescale_baseline/en/<model>.tsv``, written out in :data:`BASELINES`).

* ``eval.bertscore`` -- the **ReXrank / CXR-Report-Metric** convention: ``distilroberta-base``,
  layer 5 (bert_score's ``model2layers``), baseline-rescaled, idf off (ReXrank-metric: "IDF disabled").
* ``eval.bertscore_llava_rad`` -- the **LLaVA-Rad** convention: its evaluation calls
  ``evaluate.load("bertscore")`` with bert_score's defaults for English, i.e. ``roberta-large``,
  layer 17, no rescaling, no idf.

**SembScore** (CXR-Report-Metric ``add_semb_col``): cosine similarity of the CheXbert [CLS]
embeddings (the encoder's last hidden state at position 0, no dropout) of reference and candidate.

**RadCliQ-v1** (Yu et al. 2023, CXR-Report-Metric ``CompositeMetric``): a linear model over
``[radgraph_combined, bertscore, semb_score, bleu_score]`` standardised with the published scaler,
``z @ coefs[:4] + coefs[4]``; lower is better and ReXrank ranks by ``1 / mean(RadCliQ-v1)``.  The
constants below are those of ``CXRMetric/radcliq-v1.pkl``, read from its pickle opcodes (never
unpickled; tests/test_metrics_reference.py re-reads them).  ``bleu_score`` is CXR-Report-Metric's
BLEU-2: reports lower-cased, "." split off, split on spaces, fast_bleu's sentence BLEU with weights
(1/2, 1/2) -- here the COCO-toolkit bigram BLEU of those tokens (its coefficient is 4.3e-12, so the
two BLEU implementations cannot move RadCliQ-v1 in any printed digit).

**ROUGE-1/2/L** (``rouge_1``, ``rouge_2``, ``rouge_l_f1``): the ``rouge_score`` package's F-measures as
RadEval and LLaVA-Rad report them: lower-case, non-alphanumerics to spaces, Porter stemming of
tokens longer than 3 characters (NLTK's stemmer, RadEval's ``use_stemmer=True``), n-gram overlap /
LCS.  rrg's ``rouge_l`` stays the COCO toolkit's (beta 1.2).
"""
from __future__ import annotations

import math
import os
import re
from collections import Counter
from typing import Optional, Sequence

import numpy as np

from trainer.evaluation.nlg import lcs_length

# bert_score rescale_baseline/en/<model>.tsv, row = layer, columns P, R, F (Tiiiger/bert_score, MIT)
BASELINES = {
    ("distilroberta-base", 5): (0.84732, 0.84759504, 0.8473319),
    ("roberta-large", 17): (0.83150584, 0.8314941, 0.83122575),
}
DEFAULT_LAYERS = {"distilroberta-base": 5, "roberta-large": 17}  # bert_score model2layers

# CXR-Report-Metric radcliq-v1.pkl (StandardScaler fitted on 160 rows; coefs with the intercept last)
RADCLIQ_COLUMNS = ("radgraph_combined", "bertscore", "semb_score", "bleu_score")
RADCLIQ_MEAN = (0.5379231241355762, 0.6175725628125001, 0.7647942121140658, 0.44738335396242174)
RADCLIQ_SCALE = (0.3028258411486429, 0.22430938459304575, 0.2539439110169773, 0.2989271671041838)
RADCLIQ_COEFS = (-0.37708368261038905, -0.37030009974480316, -0.25261621789593225, 4.315048405024756e-12,
                 2.466552561323256e-10)


class MetricModelError(ValueError):
    """A metric's local model directory is missing or unusable (one line naming the config key)."""


def radcliq_v1(radgraph_combined: float, bertscore: float, semb_score: float, bleu_score: float) -> float:
    """One study's RadCliQ-v1 (lower is better)."""
    x = (radgraph_combined, bertscore, semb_score, bleu_score)
    z = [(v - m) / s for v, m, s in zip(x, RADCLIQ_MEAN, RADCLIQ_SCALE)]
    return float(sum(c * v for c, v in zip(RADCLIQ_COEFS[:4], z)) + RADCLIQ_COEFS[4])


def radcliq_bleu_tokens(report: str) -> list[str]:
    """CXR-Report-Metric ``prep_reports``: lower-case, " ." for ".", split on single spaces, drop empties."""
    return [t for t in str(report).lower().replace(".", " .").split(" ") if t != ""]


def bleu2_sentence(ref: list[str], hyp: list[str]) -> float:
    from trainer.evaluation import nlg

    return nlg.bleu_from_stats([nlg.bleu_stats([" ".join(ref)], " ".join(hyp))])[1]


# ---------------------------------------------------------------- ROUGE (rouge_score conventions)
_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_stemmer = None


def rouge_tokens(text: str, stem: bool = True) -> list[str]:
    global _stemmer
    toks = re.split(r"\s+", _NON_ALNUM.sub(" ", text.lower()))
    if stem:
        if _stemmer is None:
            from nltk.stem import porter

            _stemmer = porter.PorterStemmer()
        toks = [_stemmer.stem(t) if len(t) > 3 else t for t in toks]
    return [t for t in toks if re.fullmatch(r"[a-z0-9]+", t)]


def _fmeasure(overlap: int, n_ref: int, n_hyp: int) -> float:
    p = overlap / n_hyp if n_hyp else 0.0
    r = overlap / n_ref if n_ref else 0.0
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def rouge_scores(ref: str, hyp: str, stem: bool = True) -> dict[str, float]:
    """{rouge_1, rouge_2, rouge_l_f1} of one pair (rouge_score's ``RougeScorer(..).score(ref, hyp)`` F-measures)."""
    r, h = rouge_tokens(ref, stem), rouge_tokens(hyp, stem)
    out = {}
    for n in (1, 2):
        rc = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
        hc = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
        out[f"rouge_{n}"] = _fmeasure(sum((rc & hc).values()), sum(rc.values()), sum(hc.values()))
    out["rouge_l_f1"] = _fmeasure(lcs_length(r, h), len(r), len(h)) if r and h else 0.0
    return out


# ---------------------------------------------------------------- BERTScore
class BertScorer:
    """BERTScore from a local ``save_pretrained`` directory (see the module docstring)."""

    def __init__(self, model_dir: str, model_type: str = "distilroberta-base", num_layers: Optional[int] = None,
                 rescale_with_baseline: bool = True, idf: bool = False, batch_size: int = 64, device: str = "cpu",
                 key: str = "eval.bertscore"):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if not model_dir or not os.path.isdir(model_dir):
            raise MetricModelError(f"{key}.model_dir={model_dir!r}: not a directory (no download is attempted)")
        self.num_layers = num_layers if num_layers is not None else DEFAULT_LAYERS.get(model_type)
        if self.num_layers is None:
            raise MetricModelError(f"{key}.num_layers: no default layer for model_type {model_type!r}; set it")
        self.baseline = None
        if rescale_with_baseline:
            if (model_type, self.num_layers) not in BASELINES:
                raise MetricModelError(f"{key}: no published rescale baseline for {model_type} layer {self.num_layers} "
                                       f"(known: {sorted(BASELINES)}); set rescale_with_baseline: false")
            self.baseline = torch.tensor(BASELINES[(model_type, self.num_layers)], dtype=torch.float32)
        cfg = AutoConfig.from_pretrained(model_dir, local_files_only=True)
        prefix_space = cfg.model_type in ("roberta", "gpt2", "longformer", "bart")
        kw = {"add_prefix_space": True} if prefix_space else {}
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, **kw)
        model = AutoModel.from_pretrained(model_dir, local_files_only=True)
        layers = getattr(getattr(model, "encoder", None), "layer", None)
        if layers is None or not 0 <= self.num_layers <= len(layers):
            raise MetricModelError(f"{key}.num_layers={self.num_layers}: {model_dir} has "
                                   f"{'no encoder.layer list' if layers is None else f'{len(layers)} layers'}")
        model.encoder.layer = torch.nn.ModuleList(list(layers)[: self.num_layers])  # as bert_score drops them
        self.model = model.to(device).eval()
        self.device = torch.device(device)
        mml = self.tokenizer.model_max_length
        self.max_len = mml if mml and mml < 100_000 else cfg.max_position_embeddings - (2 if prefix_space else 0)
        self.idf, self.batch_size, self._torch = idf, batch_size, torch

    def encode(self, text: str) -> list[int]:
        text = text.strip()
        tok = self.tokenizer
        if not text:
            return [tok.cls_token_id, tok.sep_token_id]
        return tok(text, add_special_tokens=True, truncation=True, max_length=self.max_len)["input_ids"]

    def _embed(self, ids: list[int]):
        torch = self._torch
        with torch.no_grad():
            x = torch.tensor([ids], device=self.device)
            return self.model(input_ids=x, attention_mask=torch.ones_like(x)).last_hidden_state[0].float().cpu()

    def score(self, hyps: Sequence[str], refs: Sequence[str]) -> dict[str, list[float]]:
        """Per pair: {bertscore_precision, bertscore_recall, bertscore_f1} (rescaled when configured)."""
        torch = self._torch
        tok = self.tokenizer
        cache: dict[str, tuple] = {}
        for s in dict.fromkeys(list(hyps) + list(refs)):
            ids = self.encode(s)
            emb = self._embed(ids)
            cache[s] = (ids, emb / emb.norm(dim=-1, keepdim=True))
        if self.idf:
            df = Counter(i for r in refs for i in set(self.encode(r)))
            idf = lambda i: math.log((len(refs) + 1) / (df.get(i, 0) + 1))  # noqa: E731
        else:
            specials = {tok.sep_token_id, tok.cls_token_id}
            idf = lambda i: 0.0 if i in specials else 1.0  # noqa: E731
        out = {"bertscore_precision": [], "bertscore_recall": [], "bertscore_f1": []}
        for lo in range(0, len(refs), self.batch_size):
            hb, rb = list(hyps[lo:lo + self.batch_size]), list(refs[lo:lo + self.batch_size])
            lh, lr = max(len(cache[h][0]) for h in hb), max(len(cache[r][0]) for r in rb)
            for h, r in zip(hb, rb):
                (hid, he), (rid, re_) = cache[h], cache[r]
                sim = he @ re_.T
                padded = torch.zeros(lh, lr)  # bert_cos_score_idf pads the batch; padding scores 0
                padded[: len(hid), : len(rid)] = sim
                wp = padded.max(dim=1).values[: len(hid)]
                wr = padded.max(dim=0).values[: len(rid)]
                hw = torch.tensor([idf(i) for i in hid]); rw = torch.tensor([idf(i) for i in rid])
                p = float((wp * hw / hw.sum()).sum()) if hw.sum() > 0 else float("nan")
                rr = float((wr * rw / rw.sum()).sum()) if rw.sum() > 0 else float("nan")
                if len(hid) == 2 or len(rid) == 2:  # an empty side: bert_score sets P and R to 0
                    p = rr = 0.0
                f = 2 * p * rr / (p + rr) if (p + rr) != 0 else float("nan")
                vals = torch.tensor([p, rr, 0.0 if math.isnan(f) else f], dtype=torch.float32)
                if self.baseline is not None:
                    vals = (vals - self.baseline) / (1 - self.baseline)
                for k, v in zip(out, vals.tolist()):
                    out[k].append(float(v))
        return out


# ---------------------------------------------------------------- SembScore
def semb_scores(embedder, hyps: Sequence[str], refs: Sequence[str]) -> list[float]:
    """Cosine of CheXbert [CLS] embeddings per pair (0 when either norm is 0)."""
    texts = list(dict.fromkeys(list(hyps) + list(refs)))
    emb = dict(zip(texts, np.asarray(embedder.embed(texts), dtype=np.float64)))
    out = []
    for h, r in zip(hyps, refs):
        a, b = emb[r], emb[h]
        n = np.linalg.norm(a) * np.linalg.norm(b)
        out.append(float(a @ b / n) if n > 0 else 0.0)
    return out
