"""The VLM every prompt family shares: vision encoder -> projector -> image features spliced into a causal LM.

The pieces are module-level so families reuse them: ``image_text_embeds`` / ``splice_image_features``
(each ``<image>`` placeholder becomes its block of image features), ``lm_output`` (the LM over the
spliced embeddings, ``weighted_lm_loss`` on the target tokens only, per-sample weights),
``build_prompt_sample`` / ``collate_prompt_batch`` (DecodedSample -> tensors -> batch), the export
helpers (``save_backbone``, ``export_family``, ``restore_lm_tuning``), :class:`VLM` as the base module
with export/import and :class:`VLMFamily` as the base family (registered only by its subclasses: ``llava_rad``
is this VLM as it is, modeling/families/llava_rad/; radixpert and lvmed_r2 subclass both classes, llava_ta
the module, and r2genkg's own module uses the functions).
The model never imports distributed code: ZeRO, checkpoint engines and
gathering under ZeRO-3 are applied by the trainer around these calls.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterable, Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from configs.schema import to_dict
from modeling.attention import VARLEN, hf_attn_name, plan_attention
from modeling.config import ModelConfig
from modeling.packing import segment_attention_mask, segment_position_ids, token_weights, varlen_kwargs
from modeling.projector import build_projector
from modeling.formats import build_causal_lm
from modeling.family import ModelFamily, ParamGroup, family_class, read_model_json, target_text, write_model_json
from modeling.templates import PromptCodec, get_template
from modeling.tokenizer import get_tokenizer, image_token_id
from modeling.tuning import TuningSpec, is_peft, lm_state_dict_for_export, lora_parameters, wrap_lora
from modeling.vision import VisionEncoder, build_vision_encoder, image_stats, input_size, preprocess_image, \
    resolved as resolved_vision, save_vision

IGNORE = -100


@dataclass
class VLMOutput(ModelOutput):
    loss: Optional[torch.Tensor] = None
    logits: Optional[torch.Tensor] = None
    weight_sum: Optional[torch.Tensor] = None  # sum of sample weights over counted tokens (for global averaging)


def splice_image_features(embeds: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                          feats: torch.Tensor, image_token_id: int, labels: Optional[torch.Tensor] = None):
    """Replace each ``<image>`` placeholder by its ``feats`` block (N embeddings), shifting the rest.

    embeds (B, L, D); feats (P, N, D) for the P placeholders of the batch in row-major order (rows
    may hold different numbers of placeholders, as packed rows do; each row needs at least one).
    Returns (embeds (B, L + k_max(N-1), D), attention_mask, labels or None); image positions are
    attended and never counted in the loss.  An image position takes its placeholder's mask value,
    so packed ``segment_ids`` pass through as well.  Works for left- and right-padded rows alike.
    """
    bsz, length, dim = embeds.shape
    is_img = input_ids == image_token_id
    counts = is_img.sum(1)
    if bool((counts == 0).any()):
        raise ValueError(f"every sample needs at least one image placeholder, got {counts.tolist()}")
    n = feats.shape[1]
    if feats.shape[0] != int(counts.sum()):
        raise ValueError(f"{feats.shape[0]} images for {int(counts.sum())} placeholders in {bsz} rows "
                         f"({counts.tolist()} per row)")
    before = torch.cumsum(is_img.long(), 1) - is_img.long()  # placeholders strictly before each token
    new_pos = torch.arange(length, device=embeds.device) + before * (n - 1)
    new_len = length + int(counts.max()) * (n - 1)
    rows = torch.arange(bsz, device=embeds.device)[:, None].expand(bsz, length)
    text = ~is_img
    img_rows = rows[is_img][:, None].expand(-1, n)  # (P, N), placeholders in row-major order
    img_pos = new_pos[is_img][:, None] + torch.arange(n, device=embeds.device)

    out = embeds.new_zeros(bsz, new_len, dim)
    out = out.index_put((rows[text], new_pos[text]), embeds[text])
    out = out.index_put((img_rows, img_pos), feats.to(embeds.dtype))
    mask = attention_mask.new_zeros(bsz, new_len)
    mask[rows[text], new_pos[text]] = attention_mask[text]
    mask[img_rows, img_pos] = attention_mask[is_img][:, None].expand(-1, n)
    new_labels = None
    if labels is not None:
        new_labels = labels.new_full((bsz, new_len), IGNORE)
        new_labels[rows[text], new_pos[text]] = labels[text]
    return out, mask, new_labels


def image_text_embeds(lm: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, feats: torch.Tensor,
                      image_token_id: int, labels: Optional[torch.Tensor] = None):
    """The LM's token embeddings of ``input_ids`` with each ``<image>`` placeholder replaced by its ``feats``
    block (:func:`splice_image_features`); returns (embeds, mask, labels or None)."""
    table = lm.get_input_embeddings()
    embeds = table(input_ids.masked_fill(input_ids == image_token_id, 0))
    return splice_image_features(embeds, input_ids, attention_mask, feats, image_token_id, labels)


def right_padded(mask: torch.Tensor) -> bool:
    """Every row's real tokens come first (a prefix mask): causal attention alone is then exact for them."""
    m = mask.bool()
    return bool((m[:, :-1] | ~m[:, 1:]).all()) if m.shape[1] > 1 else True


def lm_logits(lm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, packed: bool = False,
              attn_impl: str = "auto", training_rows: bool = False) -> torch.Tensor:
    """The LM's logits over spliced embeddings; ``packed``: ``mask`` holds segment ids (modeling/packing.py).

    The kernel follows :func:`modeling.attention.plan_attention`: packed rows get position ids restarting per
    study and a variable-length kernel cut at the studies (or, for ``sdpa``/``eager``, the dense block-diagonal
    mask); right-padded ``training_rows`` (labels only on real tokens) need no mask at all.
    """
    plan = plan_attention(attn_impl, embeds.device, embeds.dtype)
    if not packed:
        if training_rows and plan.padded == "causal" and right_padded(mask):
            return lm(inputs_embeds=embeds, use_cache=False).logits
        return lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
    kw: dict[str, Any] = {"position_ids": segment_position_ids(mask)}
    if plan.packed in VARLEN:
        kw.update(varlen_kwargs(mask))
        attn = None
    else:
        attn = segment_attention_mask(mask)
    return lm(inputs_embeds=embeds, attention_mask=attn, use_cache=False, **kw).logits


def lm_output(lm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, labels: Optional[torch.Tensor],
              sample_weight: Optional[torch.Tensor], packed: bool, attn_impl: str) -> VLMOutput:
    """The LM over spliced embeddings (:func:`lm_logits`); the weighted target loss when there are labels."""
    logits = lm_logits(lm, embeds, mask, packed, attn_impl, training_rows=labels is not None)
    if labels is None:
        return VLMOutput(logits=logits)
    loss, weight_sum = packed_loss(logits, labels, mask, packed, sample_weight)
    return VLMOutput(loss=loss, logits=logits, weight_sum=weight_sum)


def generate_from_embeds(lm: nn.Module, embeds: torch.Tensor, mask: torch.Tensor, max_new_tokens: int, num_beams: int,
                         synced_gpus: bool, pad_token_id: int, eos_token_id: int, **kw: Any) -> torch.Tensor:
    """``lm.generate`` from spliced embeddings: new tokens only, greedy unless ``kw`` says otherwise."""
    kw.setdefault("do_sample", False)
    return lm.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=max_new_tokens, num_beams=num_beams,
                       synced_gpus=synced_gpus, pad_token_id=pad_token_id, eos_token_id=eos_token_id, **kw)


def packed_loss(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor, packed: bool,
                sample_weight: Optional[torch.Tensor]):
    """:func:`weighted_lm_loss` with per-study weights spread over packed rows' tokens when ``packed``."""
    if packed:
        sample_weight = token_weights(mask, sample_weight)
    return weighted_lm_loss(logits, labels, sample_weight)


def weighted_lm_loss(logits: torch.Tensor, labels: torch.Tensor, sample_weight: Optional[torch.Tensor] = None):
    """Next-token cross-entropy over labelled tokens, each weighted by its sample's weight.

    Returns (loss, weight_sum).  With all weights 0 the loss is an exact 0 that still
    depends on the logits, so backward runs (needed on every rank under ZeRO).
    """
    logits, target = logits[:, :-1].float(), labels[:, 1:]
    valid = target != IGNORE
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.clamp(min=0).reshape(-1),
                         reduction="none").view_as(target)
    w = valid.float()
    if sample_weight is not None:  # per sample (B,), or per token (B, L) as packed rows have
        sw = sample_weight.to(w.device, torch.float32)
        w = w * (sw[:, None] if sw.ndim == 1 else sw[:, 1:])
    total = w.sum()
    return (ce * w).sum() / total.clamp(min=1e-12), total.detach()


class VLM(nn.Module):
    """vision encoder + projector + HF causal LM; the LM sees ``<image>`` expanded to patch embeddings."""

    family_name = ""  # what its export records (rrg_model.json "family"); VLMFamily.build_model sets it

    def __init__(self, cfg: ModelConfig, vision: VisionEncoder, projector: nn.Module, lm: nn.Module,
                 tokenizer: PreTrainedTokenizerBase):
        super().__init__()
        self.cfg, self.vision, self.projector, self.lm = cfg, vision, projector, lm
        self.tokenizer = tokenizer  # plain attribute: exported with the model
        self.image_token_id = image_token_id(tokenizer)
        self.pad_token_id, self.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.rrg_tuning = "full"

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) or (B, k, C, H, W) -> (B * k, N, lm_hidden)."""
        if pixel_values.ndim == 5:
            pixel_values = pixel_values.flatten(0, 1)
        return self.projector(self.vision(pixel_values))

    def embed(self, pixel_values, input_ids, attention_mask, labels=None):
        """Input embeddings with image features spliced in; returns (embeds, mask, labels)."""
        feats = self.image_features(pixel_values)
        return image_text_embeds(self.lm, input_ids, attention_mask, feats, self.image_token_id, labels)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None, sample_weight: Optional[torch.Tensor] = None,
                segment_ids: Optional[torch.Tensor] = None) -> VLMOutput:
        """``segment_ids`` instead of ``attention_mask``: a packed batch (modeling/packing.py)."""
        packed = segment_ids is not None
        embeds, mask, labels = self.embed(pixel_values, input_ids, segment_ids if packed else attention_mask, labels)
        return self.lm_forward(embeds, mask, labels, sample_weight, packed)

    def lm_forward(self, embeds: torch.Tensor, mask: torch.Tensor, labels: Optional[torch.Tensor],
                   sample_weight: Optional[torch.Tensor], packed: bool = False) -> VLMOutput:
        """The LM over spliced embeddings; the weighted report loss when there are labels."""
        return lm_output(self.lm, embeds, mask, labels, sample_weight, packed, self.cfg.attention)

    @torch.no_grad()
    def generate(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 max_new_tokens: int, num_beams: int = 1, synced_gpus: bool = False, **kw: Any) -> torch.Tensor:
        """New tokens only, (B, <= max_new_tokens), pad after eos.  Greedy unless ``kw`` says otherwise.

        Prompts must be left-padded (the collate does it when samples carry no labels).
        """
        embeds, mask, _ = self.embed(pixel_values, input_ids, attention_mask)
        return self.lm_generate(embeds, mask, max_new_tokens, num_beams, synced_gpus, **kw)

    def lm_generate(self, embeds, mask, max_new_tokens: int, num_beams: int, synced_gpus: bool, **kw: Any):
        return generate_from_embeds(self.lm, embeds, mask, max_new_tokens, num_beams, synced_gpus, self.pad_token_id,
                                    self.eos_token_id, **kw)

    def enable_activation_checkpointing(self) -> None:
        """HF activation checkpointing on the LM and the vision tower (non-reentrant: frozen inputs are fine)."""
        lm = self.lm.get_base_model() if is_peft(self.lm) else self.lm
        for module in (lm, self.vision.model):
            if getattr(module, "supports_gradient_checkpointing", False):
                module.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    # ---- export -------------------------------------------------------------------------
    def save_pretrained(self, directory: str, merge: bool = False) -> None:
        """Write a directory plain transformers/peft can load (see module docs of tuning.py for LoRA).

        Reads parameters only (never mutates the model), so the trainer may call it on rank 0
        inside ``GatheredParameters`` under ZeRO-3.
        """
        adapter = save_backbone(directory, self.lm, self.vision, self.cfg.vision, self.tokenizer, merge)
        proj = {k: v.detach().cpu().contiguous() for k, v in self.projector.state_dict().items()}
        save_file(proj, os.path.join(directory, "projector.safetensors"))
        write_model_json(directory, {"family": self.family_name, "model_config": to_dict(export_config(self.cfg)),
                                     "tuning": self.rrg_tuning, "lm_adapter": adapter,
                                     "image_token_id": self.image_token_id})

    @classmethod
    def from_pretrained(cls, directory: str, cfg: Optional[ModelConfig] = None) -> "VLM":
        """Rebuild from ``save_pretrained`` output (adapter re-attached with plain peft)."""
        family, meta = export_family(directory, cfg)
        model = family.build_model(family.tokenizer())
        model.projector.load_state_dict(load_file(os.path.join(directory, "projector.safetensors")))
        restore_lm_tuning(model, directory, meta)
        return model


def save_backbone(directory: str, lm: nn.Module, vision: VisionEncoder, vision_cfg, tokenizer: PreTrainedTokenizerBase,
                  merge: bool = False) -> bool:
    """Write ``lm/`` (plain HF, LoRA merged when ``merge``), ``lm_adapter/`` (plain peft, unless merged),
    ``vision/`` and ``tokenizer/`` into an export directory; True when an adapter was written."""
    os.makedirs(directory, exist_ok=True)
    adapter = is_peft(lm) and not merge
    base_lm, state = lm_state_dict_for_export(lm, merge=merge)
    base_lm.save_pretrained(os.path.join(directory, "lm"), state_dict=state, save_original_format=False)
    if adapter:
        lm.save_pretrained(os.path.join(directory, "lm_adapter"))
    save_vision(vision, vision_cfg, os.path.join(directory, "vision"))
    tokenizer.save_pretrained(os.path.join(directory, "tokenizer"))
    return adapter


def restore_lm_tuning(model: nn.Module, directory: str, meta: dict) -> None:
    """An export's LoRA adapter re-attached to ``model.lm`` (plain peft) and its tuning mode restored."""
    if meta.get("lm_adapter"):
        from peft import PeftModel

        model.lm = PeftModel.from_pretrained(model.lm, os.path.join(directory, "lm_adapter"))
    model.rrg_tuning = meta.get("tuning", "full")


def export_config(cfg: ModelConfig) -> ModelConfig:
    """The model config an export records: the vision input size and normalisation resolved (the export's
    ``vision/`` is a plain Hugging Face directory; what the source checkpoint needed stays with the model)."""
    import dataclasses

    return dataclasses.replace(cfg, vision=resolved_vision(cfg.vision))


def export_family(directory: str, cfg: Optional[ModelConfig] = None) -> tuple[ModelFamily, dict]:
    """The family of an export, its config pointed at the export's ``vision/``, ``lm/``, ``tokenizer/``."""
    family_name, saved_cfg, meta = read_model_json(directory)
    cfg = export_paths(cfg or saved_cfg, directory)
    return family_class(family_name)(cfg), meta


def export_paths(cfg: ModelConfig, directory: str) -> ModelConfig:
    """``cfg`` (changed in place) pointed at the export's ``vision/``, ``lm/`` and ``tokenizer/``."""
    cfg.vision.path, cfg.vision.hf_config = os.path.join(directory, "vision"), {}
    cfg.lm.path, cfg.lm.hf_config = os.path.join(directory, "lm"), {}
    cfg.lm.tokenizer = os.path.join(directory, "tokenizer")
    return cfg


# ---- text, samples and batches ------------------------------------------------------------
def prompt_tokenizer(cfg: ModelConfig, prompts: Callable[[], list[str]], train_texts: Optional[Iterable[str]] = None,
                     save_dir: Optional[str] = None) -> PreTrainedTokenizerBase:
    """The configured tokenizer (``model.lm.tokenizer`` or ``model.lm.path``), or, with none configured, one
    trained on ``prompts()`` (every prompt the family shows the LM) and ``train_texts``; saved to ``save_dir``."""
    lm = cfg.lm
    path = lm.tokenizer or lm.path
    texts = None
    if path is None and train_texts is not None:
        texts = [*prompts(), *train_texts]
    return get_tokenizer(path, texts, lm.tokenizer_vocab_size, save_dir)


def prompt_codec(tok: PreTrainedTokenizerBase, cfg: ModelConfig) -> PromptCodec:
    """The run's prompt (``model.prompt`` in ``model.lm.chat_template``); it must leave room for the report."""
    return PromptCodec(tok, get_template(cfg.lm.chat_template, tok=tok), cfg.prompt, cfg.max_text_len)


def prompt_ids(tok: PreTrainedTokenizerBase, cfg: ModelConfig) -> list[int]:
    """bos + the templated prompt (what generation starts from)."""
    return prompt_codec(tok, cfg).ids


def build_prompt_sample(sample: Any, tok: PreTrainedTokenizerBase, cfg: ModelConfig, train: bool,
                        mean: list[float], std: list[float], prompt: PromptCodec, target: str = "report") -> dict:
    """DecodedSample -> {pixel_values, input_ids, labels (train), key, study_id, reference (eval)}.

    Train: bos + prompt + report + eos tokenised as one sequence, labels -100 on bos/prompt, cut to
    ``max_text_len``.  Eval: bos + prompt only (the model generates the report), the reference kept aside.
    """
    out: dict[str, Any] = {
        "pixel_values": preprocess_image(sample.images[0], input_size(cfg.vision), cfg.vision.channels, mean, std),
        "key": sample.key,
        "study_id": sample.record.get("study_id", sample.key),
    }
    if not train:
        out["input_ids"] = torch.tensor(prompt.ids, dtype=torch.long)
        out["reference"] = sample.report
        return out
    ids, labels = prompt.train_ids(target_text(sample, target))
    out["input_ids"] = torch.tensor(ids, dtype=torch.long)
    out["labels"] = torch.tensor(labels, dtype=torch.long)
    return out


def rows_of(items: list) -> list[dict]:
    """Builder outputs (a row dict, or a list of rows per study) flattened into rows."""
    return [row for it in items for row in (it if isinstance(it, list) else [it])]


def collate_prompt_batch(items: list[dict], pad_token_id: int) -> dict:
    """Pad and stack; right padding for training items (with labels), left padding for prompts."""
    items = rows_of(items)
    left = "labels" not in items[0]
    length = max(len(it["input_ids"]) for it in items)
    bsz = len(items)
    input_ids = torch.full((bsz, length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((bsz, length), dtype=torch.long)
    labels = None if left else torch.full((bsz, length), IGNORE, dtype=torch.long)
    for i, it in enumerate(items):
        n = len(it["input_ids"])
        span = slice(length - n, length) if left else slice(0, n)
        input_ids[i, span] = it["input_ids"]
        attention_mask[i, span] = 1
        if labels is not None:
            labels[i, span] = it["labels"]
    batch: dict[str, Any] = {
        "pixel_values": torch.stack([it["pixel_values"] for it in items]),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "sample_weight": torch.tensor([float(it.get("sample_weight", 1.0)) for it in items]),
        "keys": [it["key"] for it in items],
        "study_ids": [it["study_id"] for it in items],
    }
    if labels is not None:
        batch["labels"] = labels
    if "reference" in items[0]:
        batch["references"] = [it["reference"] for it in items]
    return batch


def black_image(x: torch.Tensor, vision_cfg) -> torch.Tensor:
    """An all-black radiograph after the encoder's normalisation, shaped like ``x`` (..., C, H, W)."""
    mean, std = image_stats(vision_cfg)
    shape = [1] * x.ndim
    shape[-3] = x.shape[-3]
    return (-torch.tensor(mean) / torch.tensor(std)).view(shape).to(x).expand_as(x).clone()


# ---- the family ---------------------------------------------------------------------------
class VLMFamily(ModelFamily):
    """The generic prompt family (registered by its subclasses): encoder + projector + causal LM, prompt
    ``<image>\\n{prompt}\\n``, report loss; ``model_class`` is the module it builds."""

    model_class: type[VLM] = VLM
    supports_packing = True

    def prompt_texts(self) -> list[str]:
        """Every prompt this family can show the LM (the tokenizer must cover them)."""
        return [get_template(self.cfg.lm.chat_template).prompt(self.cfg.prompt)]

    def tokenizer(self, train_texts: Optional[Iterable[str]] = None,
                  save_dir: Optional[str] = None) -> PreTrainedTokenizerBase:
        return prompt_tokenizer(self.cfg, self.prompt_texts, train_texts, save_dir)

    def build_lm(self, tok: PreTrainedTokenizerBase, attn: str) -> nn.Module:
        return build_causal_lm(self.cfg.lm, tok, attn)

    def build_vision(self, attn: str) -> VisionEncoder:
        return build_vision_encoder(self.cfg.vision, attn)

    def build_model(self, tok: PreTrainedTokenizerBase, assets: Optional[dict] = None) -> VLM:
        attn = hf_attn_name(self.cfg.attention)
        vision = self.build_vision(attn)
        lm = self.build_lm(tok, attn)
        projector = build_projector(self.cfg.projector, vision.hidden_size, lm.config.hidden_size)
        model = self.model_class(self.cfg, vision, projector, lm, tok)
        model.family_name = self.name  # its export records this family
        return model

    def trainable_groups(self, model: nn.Module, mode: str, spec: Optional[TuningSpec] = None) -> list[ParamGroup]:
        return [ParamGroup("projector", list(model.projector.parameters())), *self.lm_groups(model, mode, spec)]

    @staticmethod
    def lm_groups(model: nn.Module, mode: str, spec: Optional[TuningSpec] = None) -> list[ParamGroup]:
        """The LM side of a tuning mode: LoRA (wrapping ``model.lm``), or the LM (+ vision) in full."""
        spec = spec or TuningSpec(mode)
        groups = []
        if mode == "lora":
            if not is_peft(model.lm):  # a model handed in already wrapped keeps its adapter
                model.lm = wrap_lora(model.lm, spec.lora)
            groups.append(ParamGroup("lora", lora_parameters(model.lm)))
        elif mode == "full":
            groups.append(ParamGroup("lm", list(model.lm.parameters())))
            if spec.train_vision:
                groups.append(ParamGroup("vision", list(model.vision.feature_parameters())))
        return groups

    def sample_builder(self, tok: PreTrainedTokenizerBase, mode: str, target: str = "report",
                       gen=None) -> Callable[[Any], dict]:
        mean, std = image_stats(self.cfg.vision)
        return partial(build_prompt_sample, tok=tok, cfg=self.cfg, train=mode == "train", mean=mean, std=std,
                       prompt=prompt_codec(tok, self.cfg), target=target)

    def collate(self, tok: PreTrainedTokenizerBase) -> Callable[[list[dict]], dict]:
        return partial(collate_prompt_batch, pad_token_id=tok.pad_token_id)

    def ablate(self, batch: dict, kind: str) -> dict:
        if kind == "black":  # an all-black radiograph after the encoder's normalisation
            return {**batch, "pixel_values": black_image(batch["pixel_values"], self.cfg.vision)}
        return super().ablate(batch, kind)

    def save_pretrained(self, model: nn.Module, directory: str, merge: bool = False) -> None:
        model.save_pretrained(directory, merge=merge)

    @classmethod
    def load_pretrained(cls, directory: str) -> VLM:
        return cls.model_class.from_pretrained(directory)
