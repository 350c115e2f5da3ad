"""Radixpert: anatomical mask fusion into the vision tokens of a LLaVA-style report generator.

As in the paper: a frozen vision encoder gives a patch grid (a ViT at 224 px gives 14x14;
a CNN's last feature map works too).  The anatomy branch takes K region masks, either
cached in the shards (``mask_source: shard``) or predicted by a frozen segmentation network
inside the model (``mask_source: model``: a local segmenter directory in ``shards/passes/masks/segmenter.py``'s
safetensors layout, or a TorchScript file), average-pools them to
the grid, and maps them with a trainable 1x1 convolution from K to ``mask_embed_dim``.  The
result is concatenated with the patch features, and a trainable MLP maps that to LM tokens.
The LM gets LoRA on its attention projections.  Only the MLP, the 1x1 convolution and the
LoRA matrices train (``tuning: lora``); ``tuning: projector`` trains the MLP and convolution.

The masks are an input derived from the image, so they reach ``generate`` (eval mode) and
both ablations know them: ``masks`` zeroes them (the paper's "+anatomy" ablation) and
``black`` blanks the image and the masks together, for both mask sources (a model-side segmenter
is bypassed by the zeroed masks the ablation hands it).

Exports hold safetensors only: a directory segmenter is written into ``segmenter/``; a TorchScript
segmenter is code, so the export records its path instead of copying it, and loading the export
needs that file where the path says.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from modeling.family import FAMILIES, ParamGroup, read_model_json
from modeling.projector import build_projector
from modeling.tuning import TuningSpec
from modeling.vision import image_stats, input_size
from modeling.vlm import VLM, VLMFamily, VLMOutput, build_prompt_sample, collate_prompt_batch, image_text_embeds, \
    prompt_codec, rows_of


@dataclass
class RadixpertOptions:
    mask_source: Literal["shard", "model"] = "shard"
    mask_channels: list[str] = field(default_factory=list)  # shard mask channels used, in this order
    segmenter: Optional[str] = None  # mask_source model: a segmenter directory (shards/passes/masks/segmenter.py layout;
    # mask_channels picks its outputs, default all) or a TorchScript file (normalised pixels -> K logits)
    num_masks: int = 0  # K for a TorchScript segmenter (and a check for shard channels); 0: len(mask_channels)
    mask_embed_dim: int = 64  # D_emb of the 1x1 convolution


class MaskBranch(nn.Module):
    """K masks -> average-pooled to the (h, w) patch grid -> 1x1 conv K -> D_emb -> (B, h*w, D_emb)."""

    def __init__(self, num_masks: int, embed_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(num_masks, embed_dim, kernel_size=1)

    def forward(self, masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        pooled = F.adaptive_avg_pool2d(masks.to(self.conv.weight.dtype), grid)
        return self.conv(pooled).flatten(2).transpose(1, 2)


class ImageSegmenter(nn.Module):
    """A frozen ``shards/passes/masks/segmenter.py`` U-Net on the model's own input: the normalised pixels are
    taken back to [0, 1] grey, segmented at the U-Net's input size and the logits of the chosen
    channels resized back to the image (what ``rrg shards masks`` computes, inside the model)."""

    def __init__(self, unet: nn.Module, config: dict, channels: list[str], mean, std):
        super().__init__()
        self.unet, self.config = unet, dict(config)
        self.channels = list(channels) or list(config["channels"])
        missing = [c for c in self.channels if c not in config["channels"]]
        if missing:
            raise ValueError(f"model.options.mask_channels {missing} are not outputs of the segmenter "
                             f"({config['channels']})")
        self.index = [list(config["channels"]).index(c) for c in self.channels]
        self.input_size = int(config.get("input_size", 256))
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        grey = (pixel_values.float() * self.std + self.mean).mean(dim=1, keepdim=True).clamp(0, 1)
        size = pixel_values.shape[-2:]
        x = F.interpolate(grey, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False)
        logits = self.unet(x.to(_param_dtype(self.unet, x.dtype)))[:, self.index]
        return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)

    def save(self, directory: str) -> None:
        self.unet.save_pretrained(directory, list(self.config["channels"]), self.input_size)


def load_segmenter(path: str, channels: list[str], mean, std) -> nn.Module:
    """The frozen segmentation network of ``mask_source: model`` (local only; never fetched): a
    directory in ``shards/passes/masks/segmenter.py``'s layout (config.json + model.safetensors), or a TorchScript
    file mapping the model's normalised pixels to K mask logits."""
    if os.path.isdir(path):
        from shards.passes.masks.segmenter import UNet

        unet, config = UNet.from_pretrained(path)
        net = ImageSegmenter(unet, config, channels, mean, std)
    elif os.path.isfile(path):
        net = torch.jit.load(path, map_location="cpu")
    else:
        raise FileNotFoundError(f"segmenter not found: {path} (model.options.segmenter)")
    net.eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return net


def _param_dtype(module: nn.Module, default: torch.dtype) -> torch.dtype:
    """The dtype a module's weights are in (a frozen segmenter follows the run's precision)."""
    p = next(iter(module.parameters()), None)
    return p.dtype if p is not None else default


SEGMENTER_DIR = "segmenter"  # inside an export: the frozen directory segmenter (safetensors)


class Radixpert(VLM):
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
                seg_in = pixel_values.to(_param_dtype(self.segmenter, torch.float32))
                masks = torch.sigmoid(self.segmenter(seg_in).float()).to(patches.dtype)
        if masks is None:
            raise ValueError("radixpert needs masks (mask_source: shard puts them in every batch)")
        fused = torch.cat([patches, self.mask_branch(masks, self._grid(patches.shape[1])).to(patches.dtype)], -1)
        return self.projector(fused)

    def embed(self, pixel_values, input_ids, attention_mask, labels=None, masks=None):
        feats = self.image_features(pixel_values, masks)
        return image_text_embeds(self.lm, input_ids, attention_mask, feats, self.image_token_id, labels)

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
        if isinstance(self.segmenter, ImageSegmenter):  # the frozen segmenter travels with the export
            self.segmenter.save(os.path.join(directory, SEGMENTER_DIR))
        elif self.segmenter is not None:  # TorchScript is code: referenced (model.options.segmenter), not copied
            print(f"rrg: export {directory}: the TorchScript segmenter {self.cfg.options.get('segmenter')} is "
                  f"referenced, not copied (exports hold safetensors only): keep it at that path", flush=True)

    @classmethod
    def from_pretrained(cls, directory: str) -> "Radixpert":
        _, cfg, _ = read_model_json(directory)
        if os.path.isdir(os.path.join(directory, SEGMENTER_DIR)):
            cfg.options = dict(cfg.options, segmenter=os.path.join(directory, SEGMENTER_DIR))
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
class RadixpertFamily(VLMFamily):
    """Frozen encoder + anatomical mask branch (1x1 conv) + MLP + LoRA LM."""

    name = "radixpert"
    model_class = Radixpert
    Options = RadixpertOptions
    image_keys = ("pixel_values", "masks")
    ablations = {"black": "image and masks", "shuffle": "each study gets another study's image and masks",
                 "masks": "anatomical masks zeroed (the paper's +anatomy ablation)"}

    @property
    def num_masks(self) -> int:
        seg = self.opts.segmenter
        if self.opts.mask_source == "model" and seg and os.path.isdir(seg) and not self.opts.mask_channels:
            with open(os.path.join(seg, "config.json")) as f:  # every output of a directory segmenter
                return len(json.load(f)["channels"])
        k = len(self.opts.mask_channels) or self.opts.num_masks
        if k < 1:
            raise ValueError("radixpert needs model.options.mask_channels (shard masks) or num_masks >= 1")
        if self.opts.num_masks and self.opts.mask_channels and self.opts.num_masks != len(self.opts.mask_channels):
            raise ValueError("model.options.num_masks disagrees with len(mask_channels)")
        return k

    def build_model(self, tok, assets: Optional[dict] = None) -> Radixpert:
        from modeling.attention import hf_attn_name

        attn = hf_attn_name(self.cfg.attention)
        vision = self.build_vision(attn)
        lm = self.build_lm(tok, attn)
        opts = self.opts
        projector = build_projector(self.cfg.projector, vision.hidden_size + opts.mask_embed_dim, lm.config.hidden_size)
        segmenter = None
        if opts.mask_source == "model":
            if not opts.segmenter:
                raise ValueError("model.options.segmenter: mask_source 'model' needs a segmenter directory or "
                                 "TorchScript file")
            segmenter = load_segmenter(opts.segmenter, opts.mask_channels, *image_stats(self.cfg.vision))
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
                       prompt=prompt_codec(tok, self.cfg), target=target)
        return partial(build_mask_sample, base=base, opts=self.opts, size=input_size(self.cfg.vision))

    def collate(self, tok):
        from functools import partial

        return partial(collate_mask_batch, pad_token_id=tok.pad_token_id)

    def _zero_masks(self, batch: dict) -> torch.Tensor:
        """Zeroed masks for ``batch``: given to the model, they also bypass a model-side segmenter."""
        if "masks" in batch:
            return torch.zeros_like(batch["masks"])
        pix = batch["pixel_values"]
        return torch.zeros(pix.shape[0], self.num_masks, *pix.shape[-2:], dtype=pix.dtype, device=pix.device)

    def ablate(self, batch: dict, kind: str) -> dict:
        if kind == "masks":
            return {**batch, "masks": self._zero_masks(batch)}
        if kind == "black":
            out = super().ablate(batch, "black")
            return {**out, "masks": self._zero_masks(out)}
        return super().ablate(batch, kind)
