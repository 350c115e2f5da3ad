"""CheXbert-compatible labeler: BERT encoder + 14 linear heads, loaded from a local checkpoint.

Architecture (Smit et al. 2020): a BERT-base encoder; the [CLS] hidden state goes through
dropout and 14 linear heads in CheXbert's condition order (:data:`CHEXBERT_ORDER`); 13 heads
are 4-way (0 blank, 1 positive, 2 negative, 3 uncertain) and the last, No Finding, is 2-way
(0 blank, 1 positive).  Outputs map to rrg's convention: positive 1.0, negative 0.0,
uncertain -1.0, blank None, in CHEXPERT_LABELS order.

The published checkpoint is a torch file holding ``{"model_state_dict": {"module.bert...",
"module.linear_heads.N.weight", ...}}`` (a DataParallel state dict).  It is read ONLY with
``torch.load(weights_only=True)``: anything that is not plain tensors is refused with a one-line
error, never unpickled.  A ``.safetensors`` file with the same keys is accepted too.  The
tokenizer is a local directory (``save_pretrained`` layout of bert-base-uncased's); the BERT
config comes from ``bert_config`` (a config.json or its directory), else ``<tokenizer>/config.json``,
else it is read off the weight shapes (BERT-base: 64-dim attention heads).  Nothing is downloaded.
"""
from __future__ import annotations

import json
import os
import re
from typing import Optional

from configs.labelsets import CHEXPERT_LABELS
from shards.labeling.registry import LABELERS, LabelInputError, Labels

CHEXBERT_ORDER = ["Enlarged Cardiomediastinum", "Cardiomegaly", "Lung Opacity", "Lung Lesion", "Edema",
                  "Consolidation", "Pneumonia", "Atelectasis", "Pneumothorax", "Pleural Effusion", "Pleural Other",
                  "Fracture", "Support Devices", "No Finding"]
CLASS_VALUES = [None, 1.0, 0.0, -1.0]  # head class index -> rrg value (No Finding uses the first two)
MAX_TOKENS = 512


def load_state_dict(path: str) -> dict:
    """The checkpoint's tensors with the ``module.`` prefix removed; LabelInputError for anything else."""
    import torch

    if not path or not os.path.isfile(path):
        raise LabelInputError(f"CheXbert checkpoint not found: {path!r} (a local file; no download is attempted)")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        try:
            obj = load_file(path, device="cpu")
        except Exception as err:  # noqa: BLE001 - any parse failure is a bad file
            raise LabelInputError(f"{path}: not a safetensors file ({str(err).splitlines()[0]})") from None
    else:
        try:
            obj = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as err:  # noqa: BLE001 - UnpicklingError, RuntimeError, EOFError ...
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise LabelInputError(f"{path}: refused: not a plain tensor state dict readable with weights_only=True "
                                  f"({first[:160]})") from None
    if isinstance(obj, dict) and isinstance(obj.get("model_state_dict"), dict):
        obj = obj["model_state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise LabelInputError(f"{path}: not a CheXbert state dict (expected tensors under 'model_state_dict')")
    sd = {re.sub(r"^module\.", "", k): v for k, v in obj.items()}
    missing = [k for k in ("bert.embeddings.word_embeddings.weight", "linear_heads.0.weight", "linear_heads.13.weight")
               if k not in sd]
    if missing:
        raise LabelInputError(f"{path}: not a CheXbert state dict (missing {', '.join('module.' + k for k in missing)})")
    return sd


def read_bert_config(sd: dict, bert_config_path: Optional[str], tokenizer: str):
    from transformers import BertConfig

    for cand in (bert_config_path, os.path.join(tokenizer, "config.json")):
        if cand:
            file = os.path.join(cand, "config.json") if os.path.isdir(cand) else cand
            if os.path.isfile(file):
                return BertConfig(**{k: v for k, v in json.load(open(file)).items() if k != "architectures"})
    if bert_config_path:
        raise LabelInputError(f"CheXbert bert_config not found: {bert_config_path!r}")
    vocab, hidden = sd["bert.embeddings.word_embeddings.weight"].shape
    layers = len({k.split(".")[3] for k in sd if k.startswith("bert.encoder.layer.")})
    return BertConfig(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers,
                      num_attention_heads=max(1, hidden // 64),
                      intermediate_size=sd["bert.encoder.layer.0.intermediate.dense.weight"].shape[0],
                      max_position_embeddings=sd["bert.embeddings.position_embeddings.weight"].shape[0],
                      type_vocab_size=sd["bert.embeddings.token_type_embeddings.weight"].shape[0])


def build_model(config):
    """The CheXbert module: ``bert`` + ``dropout`` + ``linear_heads`` (13 x 4-way, No Finding 2-way)."""
    import torch
    from transformers import BertModel

    class CheXbert(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = BertModel(config)
            self.dropout = torch.nn.Dropout(0.1)
            self.linear_heads = torch.nn.ModuleList(
                [torch.nn.Linear(config.hidden_size, 4) for _ in range(13)] + [torch.nn.Linear(config.hidden_size, 2)])

        def forward(self, input_ids, attention_mask):
            cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
            cls = self.dropout(cls)
            return [head(cls) for head in self.linear_heads]

    return CheXbert()


@LABELERS.register("chexbert")
class CheXbertLabeler:
    """``eval.labeler: chexbert`` with ``eval.labeler_args: {checkpoint: FILE, tokenizer: DIR[, bert_config, batch_size]}``."""

    label_set = "chexpert"

    def __init__(self, checkpoint: str = "", tokenizer: str = "", bert_config: Optional[str] = None,
                 batch_size: int = 16, path: Optional[str] = None):
        import torch
        from transformers import BertTokenizerFast

        checkpoint = checkpoint or path or ""
        sd = load_state_dict(checkpoint)
        if not tokenizer or not os.path.isdir(tokenizer):
            raise LabelInputError(f"CheXbert tokenizer directory not found: {tokenizer!r} (no download is attempted)")
        self.model = build_model(read_bert_config(sd, bert_config, tokenizer))
        try:
            missing, unexpected = self.model.load_state_dict(sd, strict=False)
        except RuntimeError as err:  # a tensor of another shape (another head size, a non-BERT-base file)
            first = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), str(err))
            raise LabelInputError(f"{checkpoint}: does not fit the CheXbert layout ({first})") from None
        missing = [k for k in missing if not k.endswith("position_ids")]
        unexpected = [k for k in unexpected if not k.endswith("position_ids")]
        if missing or unexpected:
            raise LabelInputError(f"{checkpoint}: does not fit the CheXbert layout (missing {missing[:3]}, "
                                  f"unexpected {unexpected[:3]})")
        self.model.eval()
        self.tokenizer = BertTokenizerFast.from_pretrained(tokenizer, local_files_only=True)
        self.batch_size = batch_size
        # 512 wordpieces (CheXbert's cut), or fewer when the checkpoint's position table is smaller
        self.max_tokens = min(MAX_TOKENS, self.model.bert.config.max_position_embeddings)
        self._torch = torch

    @staticmethod
    def clean(report: str) -> str:
        return " ".join(report.strip().split())

    def logits(self, reports: list[str]) -> list:
        """Per report: 14 logit vectors (CHEXBERT_ORDER) -- batched, padding masked."""
        out = []
        for enc in self._batches(reports):
            heads = self.model(enc["input_ids"], enc["attention_mask"])
            out += [[h[j] for h in heads] for j in range(enc["input_ids"].shape[0])]
        return out

    def _batches(self, reports: list[str]):
        """The reports cleaned and tokenised ``batch_size`` at a time (padding masked), under no_grad."""
        with self._torch.no_grad():
            for i in range(0, len(reports), self.batch_size):
                yield self.tokenizer([self.clean(r) for r in reports[i:i + self.batch_size]], padding=True,
                                     truncation=True, max_length=self.max_tokens, return_tensors="pt")

    def embed(self, reports: list[str]) -> list:
        """Per report: the [CLS] hidden state of the last layer (no dropout), as numpy -- the vector
        CXR-Report-Metric's SembScore compares (``bert_encoder(logits=False)``); an empty report is ``[CLS] [SEP]``."""
        out = []
        for enc in self._batches(reports):
            hidden = self.model.bert(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
            out += list(hidden.last_hidden_state[:, 0].float().numpy())
        return out

    def __call__(self, reports: list[str]) -> list[Labels]:
        rows = []
        for heads in self.logits(reports):
            found = {name: CLASS_VALUES[int(h.argmax())] for name, h in zip(CHEXBERT_ORDER, heads)}
            rows.append({name: found[name] for name in CHEXPERT_LABELS})
        return rows
