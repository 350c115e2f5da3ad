"""RadGraph: entity/relation extraction from a local checkpoint, and the F1-RadGraph rewards.

**Why a reimplementation.** The reference package (``radgraph`` 0.1.18 on PyPI, Stanford-AIMI/radgraph)
vendors an old AllenNLP whose tokenizer code calls ``encode_plus`` and ``build_inputs_with_special_tokens``,
both gone in transformers 5 (this project pins 5.23), so it cannot run here.  This module re-implements
its *inference* path (DyGIE++ NER + relation heads, no coreference/events) on plain PyTorch and
transformers, reading the checkpoint directory exactly as the package stores it after download
(``~/.cache/radgraph/<version>/<model_type>/``)::

    config.json          the AllenNLP config (dataset_reader / model sections)
    weights.th           the DyGIE state dict (read with torch.load(weights_only=True) only)
    vocabulary/          non_padded_namespaces.txt, <model_type>__ner_labels.txt,
                         <model_type>__relation_labels.txt (one label per line)

The encoder named in ``config.json`` (``model.embedder.token_embedders.bert.model_name``, a Hugging
Face id such as PubMedBERT / CXR-BERT / ModernBERT) supplies only the tokenizer and the architecture
config (every weight comes from ``weights.th``): it is read from ``eval.radgraph.encoder_dir`` when set,
else from that path if it is a local directory, else from the local Hugging Face cache with downloads
disabled.  Nothing is downloaded.

Inference, step by step as the package does it (radgraph/radgraph.py, utils.py, dygie/models/*):

1. preprocessing: model type ``radgraph`` (v1) splits with the package's punctuation regex; every
   other type (``radgraph-xl``, ``modern-radgraph-xl``) uses ``radgraph_xl_preprocess_report``
   (NLTK ``wordpunct_tokenize``, i.e. ``\\w+|[^\\w\\s]+``, plus its ``).``/``%.`` fixes).  The model type
   is the dataset prefix of the vocabulary namespaces;
2. the whole report is one sentence; spans = every (start, end) of width <= ``max_span_width``;
3. each word is split into word pieces on its own; the wordpiece sequence ``[CLS] ... [SEP]`` is
   cut into segments of ``max_length`` (special tokens re-added per segment) and re-joined, and a
   word's embedding is the mean of its pieces (AllenNLP's mismatched embedder);
4. span embedding = [emb(start), emb(end), width_embedding(end - start)];
5. NER: FeedForward -> Linear(n_labels - 1), a 0 score prepended for the null label, argmax;
6. relations: the ``ceil(spans_per_word * n_words)`` best spans by a pruner score (kept in span
   order), pair embedding [a, b, a*b] -> FeedForward -> Linear(n_relation_labels), plus both pruner
   scores, a 0 null score prepended, argmax; every (i, j) with a non-null label, diagonal included;
7. output: the package's dict (``entities`` numbered from "1", relation objects only when they are
   entities), which is what the rewards read.

Rewards (radgraph/rewards.py): ``simple`` = F1 of {(tokens, label)}; ``partial`` = F1 of
{(tokens, label, has_relation)} (entities without relations keep the 2-tuple); ``complete`` = F1 of
entities without relations plus one (tokens, label, relation, target tokens) tuple per relation.
**Version trap**: the PyPI 0.1.18 release lowercases tokens only inside the complete-level
relation tuples; the repository's later commit "Fix case-sensitivity bug" (same version number)
lowercases every token.  ``case="pypi-0.1.18"`` (default) matches the released package and its
shipped tests; ``case="lower"`` matches the later code.  A pair where either report has no entity
scores 0 at every level, and so does a pair with an empty report (F1RadGraph).
``combined`` is ReXrank / CXR-Report-Metric's ``radgraph_combined``: the mean of the entity F1 and
the relation F1, entities = {(tokens, label)}, relations = {((tokens, label), (tokens, label), type)}.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass
from typing import Optional, Sequence

LEVELS = ("simple", "partial", "complete")
CASES = ("pypi-0.1.18", "lower")


class RadGraphError(ValueError):
    """A RadGraph checkpoint directory that is missing or not in the package's layout (one line)."""


# ---------------------------------------------------------------- rewards
def _f1(hyp: set, ref: set) -> float:
    """rewards.py's precision / recall / F1 (0 when a side is empty)."""
    p = sum(1 for x in hyp if x in ref) / len(hyp) if hyp else 0.0
    r = sum(1 for x in ref if x in hyp) / len(ref) if ref else 0.0
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def _candidates(ann: dict, level: str, case: str) -> set:
    low = (lambda s: s.lower()) if case == "lower" else (lambda s: s)
    ents = ann["entities"]
    out = set()
    for e in ents.values():
        if level == "simple":
            out.add((low(e["tokens"]), e["label"]))
        elif not e["relations"]:
            out.add((low(e["tokens"]), e["label"]))
        elif level == "partial":
            out.add((low(e["tokens"]), e["label"], True))
        else:
            out.update((e["tokens"].lower(), e["label"], r[0], ents[r[1]]["tokens"].lower()) for r in e["relations"])
    return out


def reward(hyp_ann: dict, ref_ann: dict, level: str = "partial", case: str = "pypi-0.1.18") -> float:
    """``radgraph.rewards.compute_reward`` for one level (see the module docstring)."""
    if level not in LEVELS:
        raise ValueError(f"RadGraph reward level must be one of {LEVELS}, got {level!r}")
    if case not in CASES:
        raise ValueError(f"RadGraph case must be one of {CASES}, got {case!r}")
    if not hyp_ann["entities"] or not ref_ann["entities"]:
        return 0.0
    return _f1(_candidates(hyp_ann, level, case), _candidates(ref_ann, level, case))


def combined(hyp_ann: dict, ref_ann: dict) -> float:
    """CXR-Report-Metric's ``radgraph_combined`` = (entity F1 + relation F1) / 2."""
    def parts(ann):
        ents = ann["entities"]
        e = {(x["tokens"], x["label"]) for x in ents.values()}
        r = {((x["tokens"], x["label"]), (ents[t]["tokens"], ents[t]["label"]), kind)
             for x in ents.values() for kind, t in x["relations"]}
        return e, r

    (he, hr), (re_, rr) = parts(hyp_ann), parts(ref_ann)
    return (_f1(he, re_) + _f1(hr, rr)) / 2


def pair_scores(hyp_ann: Optional[dict], ref_ann: Optional[dict], case: str = "pypi-0.1.18") -> dict[str, float]:
    """{simple, partial, complete, combined} of one study; an empty report (None annotation) scores 0."""
    if hyp_ann is None or ref_ann is None:
        return {"simple": 0.0, "partial": 0.0, "complete": 0.0, "combined": 0.0}
    out = {lvl: reward(hyp_ann, ref_ann, lvl, case) for lvl in LEVELS}
    out["combined"] = combined(hyp_ann, ref_ann)
    return out


# ---------------------------------------------------------------- preprocessing (radgraph/utils.py)
_V1_SPLIT = re.compile(r"(?<! )(?=[/,-,:,.,!?()])|(?<=[/,-,:,.,!?()])(?! )")
_WORDPUNCT = re.compile(r"\w+|[^\w\s]+")


def preprocess(text: str, model_type: str) -> list[str]:
    if model_type == "radgraph":
        return _V1_SPLIT.sub(" ", text).split()
    for a, b in (("\\n", "  "), ("\\f", "  "), ("\\u2122", "      "), ("\n", " "), ('\\"', "``")):
        text = text.replace(a, b)
    text = " ".join(_WORDPUNCT.findall(re.sub(r"\s+", " ", text)))
    for a, b in ((").", ") ."), ("%.", "% ."), (".'", ". '"), ("%,", "% ,"), ("%)", "% )")):
        text = text.replace(a, b)
    return text.split()


# ---------------------------------------------------------------- checkpoint layout
def read_vocabulary(directory: str) -> dict[str, list[str]]:
    """AllenNLP ``Vocabulary.from_files`` for label namespaces: {namespace: [label by index]}."""
    if not os.path.isdir(directory):
        raise RadGraphError(f"{directory}: no vocabulary/ directory (the RadGraph checkpoint layout has one)")
    out = {}
    for name in sorted(os.listdir(directory)):
        if not name.endswith(".txt") or name == "non_padded_namespaces.txt" or name.startswith("."):
            continue
        with open(os.path.join(directory, name), encoding="utf-8") as fh:
            lines = re.split(r"(?<!\\)\n", fh.read())
        if lines and lines[-1] == "":
            lines = lines[:-1]
        out[name[:-4]] = [line.replace("\\n", "\n") for line in lines]
    return out


@dataclass
class _Layout:
    model_type: str
    ner_labels: list[str]
    rel_labels: list[str]
    encoder: str
    max_length: Optional[int]
    max_span_width: int
    feature_size: int
    ff_layers: int
    spans_per_word: float


def _layout(model_dir: str) -> _Layout:
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise RadGraphError(f"eval.radgraph.model_dir={model_dir}: no config.json (expected the radgraph package's "
                            f"checkpoint directory: config.json, weights.th, vocabulary/)")
    try:
        cfg = json.load(open(cfg_path))
        model = cfg["model"]
        bert = model["embedder"]["token_embedders"]["bert"]
        ff = model["feedforward_params"]
        layout_args = dict(encoder=bert["model_name"], max_length=bert.get("max_length"),
                           max_span_width=int(model["max_span_width"]), feature_size=int(model["feature_size"]),
                           ff_layers=int(ff["num_layers"]),
                           spans_per_word=float(model["modules"]["relation"]["spans_per_word"]))
        weights = model["loss_weights"]
        coref_prop = model["modules"].get("coref", {}).get("coref_prop", 0)
    except (KeyError, TypeError, ValueError) as err:
        raise RadGraphError(f"{cfg_path}: not a RadGraph (DyGIE) config: missing or bad {err}") from None
    if not (weights.get("ner", 0) > 0 and weights.get("relation", 0) > 0) or coref_prop:
        raise RadGraphError(f"{cfg_path}: rrg reads RadGraph checkpoints with NER + relation heads and no coreference "
                            f"propagation (loss_weights {weights}, coref_prop {coref_prop})")
    vocab = read_vocabulary(os.path.join(model_dir, "vocabulary"))
    ner = [k for k in vocab if k.endswith("__ner_labels")]
    rel = [k for k in vocab if k.endswith("__relation_labels")]
    if len(ner) != 1 or len(rel) != 1:
        raise RadGraphError(f"{model_dir}/vocabulary: expected one <model_type>__ner_labels.txt and one "
                            f"__relation_labels.txt, found {sorted(vocab)}")
    if vocab[ner[0]][:1] != [""]:
        raise RadGraphError(f"{model_dir}/vocabulary/{ner[0]}.txt: the first label must be the empty null label")
    return _Layout(model_type=ner[0][: -len("__ner_labels")], ner_labels=vocab[ner[0]], rel_labels=vocab[rel[0]],
                   **layout_args)


def _resolve_encoder(name: str, encoder_dir: str) -> tuple[str, bool]:
    """(path or id, local_files_only) of the encoder's tokenizer + config (see the module docstring)."""
    if encoder_dir:
        if not os.path.isdir(encoder_dir):
            raise RadGraphError(f"eval.radgraph.encoder_dir={encoder_dir}: not a directory")
        return encoder_dir, True
    return name, True  # a local path, or a hub id resolved from the local cache only (raises if absent)


class RadGraph:
    """A RadGraph checkpoint directory as a callable: ``radgraph(texts) -> [annotation dict or None]``."""

    def __init__(self, model_dir: str, encoder_dir: str = "", device: str = "cpu", case: str = "pypi-0.1.18"):
        import torch
        from torch import nn
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        if not model_dir or not os.path.isdir(model_dir):
            raise RadGraphError(f"eval.radgraph.model_dir={model_dir!r}: not a directory (no download is attempted)")
        if case not in CASES:
            raise RadGraphError(f"eval.radgraph.case must be one of {CASES}, got {case!r}")
        self.case = case
        self.layout = L = _layout(model_dir)
        weights = os.path.join(model_dir, "weights.th")
        if not os.path.isfile(weights):
            raise RadGraphError(f"{model_dir}: no weights.th")
        try:
            sd = torch.load(weights, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - any unpickling refusal or corrupt file
            raise RadGraphError(f"{weights}: refused: not a plain tensor state dict readable with "
                                f"weights_only=True ({str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__})") from None
        src, local = _resolve_encoder(L.encoder, encoder_dir)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(src, local_files_only=local)
            enc_cfg = AutoConfig.from_pretrained(src, local_files_only=local)
        except OSError as err:
            raise RadGraphError(f"RadGraph encoder {L.encoder!r} (named in {model_dir}/config.json) is not available "
                                f"locally: set eval.radgraph.encoder_dir to a directory with its tokenizer and "
                                f"config.json ({str(err).splitlines()[0][:120]})") from None
        prefix = "_embedder.token_embedder_bert._matched_embedder.transformer_model."
        self.encoder = AutoModel.from_config(enc_cfg)
        enc_sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not enc_sd:
            raise RadGraphError(f"{weights}: no '{prefix}*' tensors: not a RadGraph DyGIE state dict")
        missing, unexpected = self.encoder.load_state_dict(enc_sd, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise RadGraphError(f"{weights}: the encoder weights do not fit {L.encoder!r} (missing {missing[:3]}, "
                                f"unexpected {unexpected[:3]})")
        hidden = enc_cfg.hidden_size
        span_dim = 2 * hidden + L.feature_size
        ner_ns, rel_ns = f"{L.model_type}__ner_labels", f"{L.model_type}__relation_labels"

        def take(pre: str) -> dict:
            got = {k[len(pre):]: v for k, v in sd.items() if k.startswith(pre)}
            if not got:
                raise RadGraphError(f"{weights}: missing '{pre}*' tensors (not the DyGIE layout of {model_dir}/config.json)")
            return got

        def ff_stack(pre: str) -> nn.ModuleList:
            t = take(pre)
            layers = nn.ModuleList()
            for i in range(L.ff_layers):
                w = t[f"_linear_layers.{i}.weight"]
                lin = nn.Linear(w.shape[1], w.shape[0])
                lin.load_state_dict({"weight": w, "bias": t[f"_linear_layers.{i}.bias"]})
                layers.append(lin)
            return layers

        def linear(pre: str) -> nn.Linear:
            t = take(pre)
            lin = nn.Linear(t["weight"].shape[1], t["weight"].shape[0])
            lin.load_state_dict({"weight": t["weight"], "bias": t["bias"]})
            return lin

        try:
            self.width = nn.Embedding.from_pretrained(sd["_endpoint_span_extractor._span_width_embedding.weight"])
            self.ner_ff = ff_stack(f"_ner._ner_scorers.{ner_ns}.0._module.")
            self.ner_out = linear(f"_ner._ner_scorers.{ner_ns}.1._module.")
            self.prune_ff = ff_stack(f"_relation._mention_pruners.{rel_ns}._scorer.0._module.")
            self.prune_out = linear(f"_relation._mention_pruners.{rel_ns}._scorer.1._module.")
            self.rel_ff = ff_stack(f"_relation._relation_feedforwards.{rel_ns}.")
            self.rel_out = linear(f"_relation._relation_scorers.{rel_ns}.")
        except KeyError as err:
            raise RadGraphError(f"{weights}: missing tensor {err} (not the DyGIE layout)") from None
        except RuntimeError as err:
            raise RadGraphError(f"{weights}: a tensor does not fit the config ({str(err).splitlines()[0][:160]})") from None
        if self.ner_ff[0].in_features != span_dim or self.ner_out.out_features != len(L.ner_labels) - 1 \
                or self.rel_out.out_features != len(L.rel_labels):
            raise RadGraphError(f"{weights}: head sizes do not match config.json / vocabulary/ "
                                f"(span dim {span_dim}, {len(L.ner_labels)} NER and {len(L.rel_labels)} relation labels)")
        self.device = torch.device(device)
        for m in (self.encoder, self.width, self.ner_ff, self.ner_out, self.prune_ff, self.prune_out, self.rel_ff,
                  self.rel_out):
            m.to(self.device).eval()
        self._torch = torch
        tok = self.tokenizer
        ids = tok("a", add_special_tokens=True)["input_ids"]
        plain = tok("a", add_special_tokens=False)["input_ids"]
        start = ids.index(plain[0]) if plain and plain[0] in ids else 1
        self.start_ids, self.end_ids = ids[:start], ids[start + len(plain):]

    # ---- pieces
    def _ff(self, layers, x):
        for lin in layers:
            x = self._torch.relu(lin(x))
        return x

    def _word_embeddings(self, words: list[str]):
        torch = self._torch
        pieces, offsets = [], []
        for w in words:
            ids = self.tokenizer(w, add_special_tokens=False)["input_ids"]
            offsets.append((len(pieces), len(pieces) + len(ids) - 1) if ids else None)
            pieces += ids
        n_start, n_end = len(self.start_ids), len(self.end_ids)
        seg = (self.layout.max_length - n_start - n_end) if self.layout.max_length else max(1, len(pieces))
        chunks = [pieces[i:i + seg] for i in range(0, len(pieces), seg)] or [[]]
        embs = []
        for chunk in chunks:  # each segment embedded on its own; segment-level special tokens dropped
            ids = torch.tensor([self.start_ids + chunk + self.end_ids], device=self.device)
            out = self.encoder(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
            embs.append(out[n_start:n_start + len(chunk)])
        flat = torch.cat(embs, dim=0)
        rows = [flat[a:b + 1].mean(dim=0) if off is not None else flat.new_zeros(flat.shape[-1])
                for off in offsets for a, b in [off or (0, 0)]]
        return torch.stack(rows)

    @staticmethod
    def spans(n: int, width: int) -> list[tuple[int, int]]:
        return [(s, e) for s in range(n) for e in range(s, min(s + width, n))]

    def annotate_words(self, words: list[str]) -> dict:
        torch = self._torch
        L = self.layout
        with torch.no_grad():
            emb = self._word_embeddings(words)
            spans = self.spans(len(words), L.max_span_width)
            st = torch.tensor([s for s, _ in spans], device=self.device)
            en = torch.tensor([e for _, e in spans], device=self.device)
            span_emb = torch.cat([emb[st], emb[en], self.width(en - st)], dim=-1)
            ner = self.ner_out(self._ff(self.ner_ff, span_emb))
            ner = torch.cat([ner.new_zeros(len(spans), 1), ner], dim=-1).argmax(dim=-1).tolist()
            entities = [(spans[i], L.ner_labels[lab]) for i, lab in enumerate(ner) if lab != 0]
            keep = max(1, math.ceil(len(words) * L.spans_per_word))
            scores = self.prune_out(self._ff(self.prune_ff, span_emb)).squeeze(-1)
            top = torch.sort(torch.topk(scores, min(keep, len(spans))).indices).values
            te = span_emb[top]
            k = len(top)
            pair = torch.cat([te.unsqueeze(1).expand(k, k, -1), te.unsqueeze(0).expand(k, k, -1),
                              te.unsqueeze(1) * te.unsqueeze(0)], dim=-1)
            rel = self.rel_out(self._ff(self.rel_ff, pair)) + scores[top].view(k, 1, 1) + scores[top].view(1, k, 1)
            rel = torch.cat([rel.new_zeros(k, k, 1), rel], dim=-1).argmax(dim=-1)
            top_spans = [spans[i] for i in top.tolist()]
            relations = [(top_spans[i], top_spans[j], L.rel_labels[int(rel[i, j]) - 1])
                         for i, j in (rel > 0).nonzero().tolist()]
        index = {span: n for n, (span, _) in enumerate(entities)}
        out = {}
        for n, ((s, e), label) in enumerate(entities):
            rels = [[kind, str(index[obj] + 1)] for subj, obj, kind in relations if subj == (s, e) and obj in index]
            out[str(n + 1)] = {"tokens": " ".join(words[s:e + 1]), "label": label, "start_ix": s, "end_ix": e,
                               "relations": rels}
        return {"text": " ".join(words), "entities": out, "data_source": None, "data_split": "inference"}

    def __call__(self, texts: Sequence[str]) -> list[Optional[dict]]:
        """One annotation per text (None for an empty text: F1RadGraph scores such a pair 0)."""
        out = []
        for t in texts:
            words = [w[1:] if w in ("/.", "/?") else w for w in preprocess(t, self.layout.model_type)] if t else []
            out.append(self.annotate_words(words) if words else None)
        return out

    def scores(self, hyps: Sequence[str], refs: Sequence[str]) -> list[dict[str, float]]:
        """Per study: {simple, partial, complete, combined} (hypothesis first, as F1RadGraph takes it)."""
        cache: dict[str, Optional[dict]] = {}
        todo = [t for t in dict.fromkeys(list(hyps) + list(refs)) if t]
        for t, ann in zip(todo, self(todo)):
            cache[t] = ann
        return [pair_scores(cache.get(h) if h and r else None, cache.get(r) if h and r else None, self.case)
                for h, r in zip(hyps, refs)]
