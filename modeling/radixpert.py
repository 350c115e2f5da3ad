"""Radixpert: anatomical mask fusion into the vision tokens of a LLaVA-style report generator.

As in the paper: a frozen vision encoder gives a patch grid (a ViT at 224 px gives 14x14;
a CNN's last feature map works too).  The anatomy branch takes K region masks, either
cached in the shards (``mask_source: shard``) or predicted by a frozen segmentation network
inside the model (``mask_source: model``: a local TorchScript file), average-pools them to
the grid, and maps them with a trainable 1x1 convolution from K to ``mask_embed_dim``.  The
result is concatenated with the patch features, and a trainable MLP maps that to LM tokens.
The LM gets LoRA on its attention projections.  Only the MLP, the 1x1 convolution and the
LoRA matrices train (``tuning: lora``); ``tuning: projector`` trains the MLP and convolution.

The masks are an input derived from the image, so they reach ``generate`` (eval mode) and
both ablations know them: ``masks`` zeroes them (the paper's "+anatomy" ablation) and
``black`` blanks the image and the masks together.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from modeling.family import FAMILIES, ParamGroup, read_model_json
from modeling.llava_rad import LlavaRad, LlavaRadFamily, VLMOutput, build_prompt_sample, collate_prompt_batch, \
    prompt_ids, rows_of, splice_image_features
from modeling.projector import build_projector
from modeling.tuning import TuningSpec
from modeling.vision import image_stats


@dataclass
class RadixpertOptions:
    mask_source: Literal["shard", "model"] = "shard"
    mask_channels: list[str] = field(default_factory=list)  # shard mask channels used, in this order
    segmenter: Optional[str] = None  # mask_source model: a TorchScript segmentation network (image -> K logits)
    num_masks: int = 0  # K for mask_source model (and a check for shard channels); 0: len(mask_channels)
    mask_embed_dim: int = 64  # D_emb of the 1x1 convolution


class MaskBranch(nn.Module):
    """K masks -> average-pooled to the (h, w) patch grid -> 1x1 conv K -> D_emb -> (B, h*w, D_emb)."""

    def __init__(self, num_masks: int, embed_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(num_masks, embed_dim, kernel_size=1)

    def forward(self, masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(masks.to(self.conv.weight.dtype), grid)
        return self.conv(pooled).flatten(2).transpose(1, 2)


def load_segmenter(path: str) -> nn.Module:
    """A frozen TorchScript segmentation network (a local file; never fetched)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"segmenter not found: {path} (model.options.segmenter)")
    net = torch.jit.load(path, map_location="cpu")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


class Radixpert(LlavaRad):
    family_name = "radixpert"

    def __init__(self, cfg, vision, projector, lm, tokenizer, mask_branch: MaskBranch,
                 segmenter: Optional[nn.Module] = None):
        super().__init__(cfg, vision, projector, lm, tokenizer)
        self.mask_branch = mask_branch
        self.segmenter = segmenter

    def _grid(self, n: int) -> tuple[int, int]:
        side = int(round(n ** 0.5))
        if side * side != n:
            raise ValueError(f"{n} vision tokens do not form a square grid")
        return side, side

    def image_features(self, pixel_values: torch.Tensor, masks: Optional[torch.Tensor] = None) -> torch.Tensor:
        patches = self.vision(pixel_values)  # (B, N, D_vis)
        if self.segmenter is not None and masks is None:
            with torch.no_grad():
                masks = torch.sigmoid(self.segmenter(pixel_values.float())).to(patches.dtype)
        if masks is None:
            raise ValueError("radixpert needs masks (mask_source: shard puts them in every batch)")
        fused = torch.cat([patches, self.mask_branch(masks, self._grid(patches.shape[1])).to(patches.dtype)], -1)
        return self.projector(fused)

    def embed(self, pixel_values, input_ids, attention_mask, labels=None, masks=None):
        table = self.lm.get_input_embeddings()
        embeds = table(input_ids.masked_fill(input_ids == self.image_token_id, 0))
        feats = self.image_features(pixel_values, masks)
        return splice_image_features(embeds, input_ids, attention_mask, feats, self.image_token_id, labels)

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                masks: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                sample_weight: Optional[torch.Tensor] = None, segment_ids: Optional[torch.Tensor] = None) -> VLMOutput:
        packed = segment_ids is not None  # a packed batch (modeling/packing.py)
        embeds, mask, labels = self.embed(pixel_values, input_ids, segment_ids if packed else attention_mask, labels, masks)
        return self.lm_forward(embeds, mask, labels, sample_weight, packed)

    @torch.no_grad()
    def generate(self, pixel_values, input_ids, attention_mask, max_new_tokens: int, num_beams: int = 1,
                 synced_gpus: bool = False, masks: Optional[torch.Tensor] = None, **kw: Any) -> torch.Tensor:
        embeds, mask, _ = self.embed(pixel_values, input_ids, attention_mask, masks=masks)
        return self.lm_generate(embeds, mask, max_new_tokens, num_beams, synced_gpus, **kw)

    def save_pretrained(self, directory: str, merge: bool = False) -> None:
        super().save_pretrained(directory, merge=merge)
        state = {k: v.detach().cpu().contiguous() for k, v in self.mask_branch.state_dict().items()}
        save_file(state, os.path.join(directory, "mask_branch.safetensors"))
        if self.segmenter is not None:  # the frozen segmenter travels with the export
            self.segmenter.save(os.path.join(directory, "segmenter.pt"))

    @classmethod
    def from_pretrained(cls, directory: str) -> "Radixpert":
        _, cfg, _ = read_model_json(directory)
        if os.path.isfile(os.path.join(directory, "segmenter.pt")):
            cfg.options = dict(cfg.options, segmenter=os.path.join(directory, "segmenter.pt"))
        model = super().from_pretrained(directory, cfg=cfg)
        model.mask_branch.load_state_dict(load_file(os.path.join(directory, "mask_branch.safetensors")))
        return model


def build_mask_sample(sample: Any, *, base: Callable[[Any], dict], opts: RadixpertOptions, size: int) -> dict:
    """The base prompt sample plus ``masks`` (K, size, size) in [0, 1], area-resampled from the shard's masks."""
    row = base(sample)
    if opts.mask_source != "shard":
        return row
    if sample.masks is None:
        raise ValueError(f"study {sample.key} (shard {sample.shard}) has no masks: radixpert with "
                         f"mask_source 'shard' needs them (`rrg shards masks`, or mask_source: model)")
    channels = list(sample.mask_channels)
    wanted = opts.mask_channels or channels
    missing = [c for c in wanted if c not in channels]
    if missing:
        raise ValueError(f"study {sample.key}: mask channels {missing} not in the shard's {channels}")
    m = np.stack([np.asarray(sample.masks[channels.index(c)], dtype=np.float32) for c in wanted])
    masks = F.interpolate(torch.from_numpy(m)[None], size=(size, size), mode="area")[0]
    row["masks"] = masks.to(torch.float16)
    return row


def collate_mask_batch(items: list, pad_token_id: int) -> dict:
    batch = collate_prompt_batch(items, pad_token_id)
    rows = rows_of(items)
    if "masks" in rows[0]:
        batch["masks"] = torch.stack([r["masks"] for r in rows]).float()
    return batch


@FAMILIES.register("radixpert")
class RadixpertFamily(LlavaRadFamily):
    """Frozen encoder + anatomical mask branch (1x1 conv) + MLP + LoRA LM."""

    name = "radixpert"
    model_class = Radixpert
    Options = RadixpertOptions
    image_keys = ("pixel_values", "masks")
    ablations = {"black": "image and masks", "shuffle": "each study gets another study's image and masks",
                 "masks": "anatomical masks zeroed (the paper's +anatomy ablation)"}

    @property
    def num_masks(self) -> int:
        k = len(self.opts.mask_channels) or self.opts.num_masks
        if k < 1:
            raise ValueError("radixpert needs model.options.mask_channels (shard masks) or num_masks >= 1")
        if self.opts.num_masks and self.opts.mask_channels and self.opts.num_masks != len(self.opts.mask_channels):
            raise ValueError("model.options.num_masks disagrees with len(mask_channels)")
        return k

    def build_model(self, tok, assets: Optional[dict] = None) -> Radixpert:
        from modeling.attention import hf_attn_name

        attn = hf_attn_name(self.cfg.attn_implementation)
        vision = self.build_vision(attn)
        lm = self.build_lm(tok, attn)
        opts = self.opts
        projector = build_projector(self.cfg.projector, vision.hidden_size + opts.mask_embed_dim, lm.config.hidden_size)
        segmenter = None
        if opts.mask_source == "model":
            if not opts.segmenter:
                raise ValueError("model.options.segmenter: mask_source 'model' needs a TorchScript segmenter file")
            segmenter = load_segmenter(opts.segmenter)
        return Radixpert(self.cfg, vision, projector, lm, tok, MaskBranch(self.num_masks, opts.mask_embed_dim),
                         segmenter)

    def trainable_groups(self, model: nn.Module, mode: str, spec: Optional[TuningSpec] = None) -> list[ParamGroup]:
        return [ParamGroup("mlp", list(model.projector.parameters())),
                ParamGroup("mask_conv", list(model.mask_branch.parameters())), *self.lm_groups(model, mode, spec)]

    def derived_inputs(self) -> tuple[str, ...]:
        """Shard masks come from the segmenter pass (``rrg shards masks``); a model segmenter needs nothing."""
        return ("masks",) if self.opts.mask_source == "shard" else ()

    def sample_builder(self, tok, mode: str, target: str = "report", gen=None):
        from functools import partial

        mean, std = image_stats(self.cfg.vision)
        base = partial(build_prompt_sample, tok=tok, cfg=self.cfg, train=mode == "train", mean=mean, std=std,
                       prompt=prompt_ids(tok, self.cfg), target=target)
        return partial(build_mask_sample, base=base, opts=self.opts, size=self.cfg.vision.image_size)

    def collate(self, tok):
        from functools import partial

        return partial(collate_mask_batch, pad_token_id=tok.pad_token_id)

    def ablate(self, batch: dict, kind: str) -> dict:
        if kind == "masks":
            return {**batch, "masks": torch.zeros_like(batch["masks"])} if "masks" in batch else batch
        if kind == "black":
            out = super().ablate(batch, "black")
            return {**out, "masks": torch.zeros_like(out["masks"])} if "masks" in out else out
        return super().ablate(batch, kind)
