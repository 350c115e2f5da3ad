"""Vision encoders in the formats they ship in, detected from the files on disk.

:func:`detect` looks at a local path and returns a :class:`VisionSource`; :meth:`VisionSource.build`
returns a Hugging Face vision model holding the checkpoint's weights (or, for ``rrg plan``, only its
architecture).  Formats transformers does not read are read natively, by an exact key mapping onto an
equivalent Hugging Face module, so the tower trains, exports (``save_pretrained``) and reloads like any
other.  No torchvision, timm or open_clip is imported.

=====================  ==================================================  =============================
format                 files                                               becomes
=====================  ==================================================  =============================
Hugging Face           ``config.json`` (+ ``preprocessor_config.json``):   the vision model itself; a dual
                       CLIP / SigLIP (dual or vision-only), Dinov2 /       CLIP/SigLIP gives its tower, a
                       RAD-DINO (with registers too), ViT, Swin, ResNet    classification checkpoint its
                       (classification checkpoints included), or a         backbone, a multimodal one
                       multimodal checkpoint (Gemma3 / MedGemma)           (``vision_tower.*``) its tower
open_clip (timm trunk) ``open_clip_config.json`` + ``open_clip_pytorch_    HF ``ViTModel`` (BiomedCLIP's
                       model.bin`` (BiomedCLIP), or an open_clip model     ``vit_base_patch16_224``) or
                       config (``*.json`` with ``vision_cfg``) + a         ``Dinov2Model`` (a ``*_dinov2``
                       training checkpoint (``*.pt``, ``module.visual.     trunk with LayerScale: LLaVA-
                       trunk.*``: LLaVA-Rad's BiomedCLIP-CXR 518 px)       Rad's BiomedCLIP-CXR)
BioViL (hi-ml)         ``biovil_image_resnet50_proj_size_128.pt``: hi-ml-  HF ``ResNetModel`` (the ResNet-
                       multimodal's ``ImageModel`` state dict (ResNet-50   50 trunk; the 128-d contrastive
                       ``encoder.encoder.*`` + ``projector.model.*``)      projector is not used)
=====================  ==================================================  =============================

Sources of the layouts: open_clip ``factory.py`` (``open_clip_config.json`` = ``model_cfg`` +
``preprocess_cfg``; ``load_state_dict`` unwraps ``state_dict`` and strips ``module.``) and
``timm_model.py`` (``visual.trunk`` = the timm model, ``visual.head`` its projection); timm's
``VisionTransformer`` key names (``cls_token``, ``pos_embed``, ``patch_embed.proj``, ``blocks.N.norm1``,
``.attn.qkv`` fused q/k/v, ``.attn.proj``, ``.ls1.gamma``, ``.norm2``, ``.mlp.fc1/fc2``, ``.ls2.gamma``,
``norm``; LayerNorm eps 1e-6); LLaVA-Rad ``open_clip_encoder.py`` (BiomedCLIP-CXR as an open_clip
checkpoint ``biomedclipcxr_518_checkpoint.pt`` + model config ``biomedclipcxr_518.json``); hi-ml-multimodal
``image/model/model.py`` (``ImageModel.encoder.encoder`` = a torchvision ResNet, ``.projector.model`` =
1x1 convs) and ``pretrained.py`` (the file name).  When the configured image size differs from the grid
the position embeddings were trained at, they are resized as open_clip's ``resize_pos_embed`` does
(bicubic, antialiased, prefix tokens kept).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import torch.nn.functional as F

from modeling.formats import ModelFormatError, _from_pretrained, check_loading_info, listing, quiet_load_report, \
    read_json, read_state_dict

ACCEPTED = ("a Hugging Face vision model (config.json: clip, siglip, dinov2, vit, swin, resnet, or a multimodal "
            "checkpoint such as Gemma3/MedGemma)", "open_clip (open_clip_config.json + open_clip_pytorch_model.bin, "
            "or an open_clip model .json + training checkpoint .pt)", "BioViL (hi-ml-multimodal .pt)")
HF_VISION_TYPES = ("clip", "clip_vision_model", "siglip", "siglip_vision_model", "dinov2", "dinov2_with_registers",
                   "vit", "swin", "resnet")
BIOVIL_FILE = "biovil_image_resnet50_proj_size_128.pt"
WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors")
# heads of timm's ViT sizes (not stored in the weights); other names fall back to width / 64
TIMM_HEADS = {"tiny": 3, "small": 6, "base": 12, "large": 16, "huge": 16, "giant": 24, "gigantic": 16, "so400m": 16}


@dataclass
class VisionSource:
    """A vision checkpoint on disk, understood: what it is and how to build the HF module from it."""

    kind: str  # "hf", "hf_tower" (inside a multimodal checkpoint), "open_clip", "biovil"
    path: str
    config: Any  # the transformers config of the module rrg builds
    model_class: type
    mean: Optional[list[float]] = None  # the checkpoint's own normalisation, when it states one
    std: Optional[list[float]] = None
    native_size: Optional[int] = None  # the input size the checkpoint was trained at, when known
    describe: str = ""
    _weights: Optional[Callable[[], dict[str, torch.Tensor]]] = field(default=None, repr=False)
    _key_mapping: Optional[dict[str, str]] = None

    def build(self, *, attn: str, dtype: torch.dtype, image_size: Optional[int] = None, weights: bool = True):
        """The HF vision model; ``weights=False``: architecture only (``rrg plan`` uses the meta device)."""
        config = self.config
        if self.kind in ("open_clip",) and image_size and image_size != config.image_size:
            config = _with_image_size(config, image_size)
        if not weights:
            model = self.model_class._from_config(config, attn_implementation=attn)  # noqa: SLF001
            return model
        if self.kind in ("hf", "hf_tower"):
            kw: dict[str, Any] = dict(local_files_only=True, dtype=dtype, output_loading_info=True, config=config)
            if self._key_mapping:
                kw["key_mapping"] = self._key_mapping
            with quiet_load_report():
                model, info = _from_pretrained(self.model_class, self.path, attn, kw)
            info["missing_keys"] = [k for k in info.get("missing_keys", []) if not _unused_part(k)]
            check_loading_info(info, self.path, "model.vision.path")
            return model
        model = _construct(self.model_class, config, attn)
        state = self._weights()
        if "embeddings.position_embeddings" in state:
            state["embeddings.position_embeddings"] = resize_pos_embed(
                state["embeddings.position_embeddings"], _grid(config), prefix=1)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not _unused_part(k) and not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            raise ModelFormatError(f"model.vision.path {self.path}: the {self.describe} weights do not fit the "
                                   f"equivalent {self.model_class.__name__} (missing {missing[:3]}, unexpected "
                                   f"{unexpected[:3]})")
        return model.to(dtype)


def _unused_part(key: str) -> bool:
    """Parts a classification/pooling checkpoint may lack and rrg never uses (pooler, mask token)."""
    return key.startswith(("pooler.", "embeddings.mask_token")) or ".pooler." in key


def _construct(cls, config, attn: str):
    from transformers import ViTModel

    if cls is ViTModel:
        model = cls(config, add_pooling_layer=False)
    else:
        model = cls(config)
    return model


def _with_image_size(config, size: int):
    config = config.__class__.from_dict(config.to_dict())
    config.image_size = size
    return config


def _grid(config) -> tuple[int, int]:
    size, patch = config.image_size, config.patch_size
    size = size if isinstance(size, (list, tuple)) else (size, size)
    patch = patch if isinstance(patch, (list, tuple)) else (patch, patch)
    return size[0] // patch[0], size[1] // patch[1]


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int], prefix: int = 1) -> torch.Tensor:
    """(1, prefix + h*w, D) position embeddings -> (1, prefix + grid, D), as open_clip's ``resize_pos_embed``:
    the grid part resized bicubically with antialiasing (align_corners False), the prefix (class) tokens kept."""
    if pos.shape[1] == prefix + grid[0] * grid[1]:
        return pos
    tok, img = pos[:, :prefix], pos[:, prefix:]
    old = int(math.isqrt(img.shape[1]))
    if old * old != img.shape[1]:
        raise ModelFormatError(f"position embeddings of {img.shape[1]} patches do not form a square grid")
    img = img.reshape(1, old, old, -1).permute(0, 3, 1, 2).float()
    img = F.interpolate(img, size=grid, mode="bicubic", antialias=True, align_corners=False)
    img = img.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([tok, img], dim=1)


# ---- detection ---------------------------------------------------------------------------------
def detect(path: str) -> VisionSource:
    """What the vision checkpoint at ``path`` is; a format rrg does not read raises one line."""
    p = Path(path)
    if p.is_file():
        return _from_weights_file(p, None)
    if not p.is_dir():
        raise ModelFormatError(f"model.vision.path {path}: no such file or directory")
    if (p / "open_clip_config.json").is_file():
        return _open_clip(p, p / "open_clip_config.json")
    model_jsons = [j for j in sorted(p.glob("*.json")) if j.name != "config.json" and _is_open_clip_model_json(j)]
    if model_jsons:
        return _open_clip(p, model_jsons[0])
    if (p / BIOVIL_FILE).is_file():
        return _biovil(p / BIOVIL_FILE)
    if (p / "config.json").is_file():
        source = _hf(p)
        if source is not None:
            return source
    pts = [f for f in sorted(p.iterdir()) if f.suffix in (".pt", ".pth")]
    if len(pts) == 1:
        return _from_weights_file(pts[0], None)
    raise ModelFormatError(f"model.vision.path {path}: found {listing(p)}; rrg reads {'; '.join(ACCEPTED)}")


def _is_open_clip_model_json(path: Path) -> bool:
    try:
        data = read_json(path)
    except ModelFormatError:
        return False
    return "vision_cfg" in data.get("model_cfg", data)


def _from_weights_file(path: Path, model_cfg: Optional[dict]) -> VisionSource:
    state = read_state_dict(path, mmap=True)
    if any(k.startswith("encoder.encoder.conv1.") for k in state):
        return _biovil(path, state)
    if any(k.startswith("visual.trunk.") for k in state):
        if model_cfg is None:
            raise ModelFormatError(f"model.vision.path {path}: an open_clip checkpoint without its model config; "
                                   f"put the open_clip .json (with vision_cfg) beside it and point vision.path at "
                                   f"the directory")
        return _open_clip_from(path, model_cfg, {}, state)
    raise ModelFormatError(f"model.vision.path {path}: a weights file with keys like {sorted(state)[:3]}; rrg reads "
                           f"{'; '.join(ACCEPTED)}")


# ---- Hugging Face --------------------------------------------------------------------------------
def _preprocessor(p: Path) -> tuple[Optional[list[float]], Optional[list[float]], Optional[int]]:
    pre = p / "preprocessor_config.json"
    if not pre.is_file():
        return None, None, None
    data = read_json(pre)
    size = data.get("crop_size") or data.get("size")
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge")
    mean, std = data.get("image_mean"), data.get("image_std")
    return (list(mean) if mean else None), (list(std) if std else None), (int(size) if size else None)


def _hf(p: Path) -> Optional[VisionSource]:
    from transformers import AutoConfig, AutoModel

    try:
        cfg = AutoConfig.from_pretrained(str(p), local_files_only=True)
    except (ValueError, KeyError, OSError) as err:
        raise ModelFormatError(f"model.vision.path {p}: config.json is not a model transformers knows "
                               f"({str(err).splitlines()[0][:160]})") from None
    mean, std, pre_size = _preprocessor(p)
    vision_cfg = getattr(cfg, "vision_config", None)
    if cfg.model_type in HF_VISION_TYPES and vision_cfg is None:  # a vision model (or a classifier of one)
        cls = AutoModel._model_mapping[type(cfg)]
        size = getattr(cfg, "image_size", None) or pre_size
        return VisionSource("hf", str(p), cfg, cls, mean, std, _int_size(size), f"Hugging Face {cfg.model_type}")
    if vision_cfg is None:
        return None  # e.g. a text model (BioViL's repository ships CXR-BERT's config.json)
    try:
        cls = AutoModel._model_mapping[type(vision_cfg)]
    except KeyError:
        raise ModelFormatError(f"model.vision.path {p}: the vision tower of this {cfg.model_type} checkpoint is a "
                               f"{vision_cfg.model_type}, which transformers has no model class for") from None
    size = getattr(vision_cfg, "image_size", None) or pre_size
    if cfg.model_type in ("clip", "siglip"):  # dual: the *VisionModel keeps the tower under the same prefix
        return VisionSource("hf", str(p), vision_cfg, cls, mean, std, _int_size(size), f"the {cfg.model_type} tower")
    # a multimodal checkpoint (Gemma3 / MedGemma, LLaVA): the tower is stored under vision_tower.*
    mapping = {r"^vision_tower\.": "", r"^model\.vision_tower\.": ""}
    return VisionSource("hf_tower", str(p), vision_cfg, cls, mean, std, _int_size(size),
                        f"the {vision_cfg.model_type} tower of a {cfg.model_type} checkpoint", _key_mapping=mapping)


def _int_size(size) -> Optional[int]:
    if size is None:
        return None
    return int(size[0] if isinstance(size, (list, tuple)) else size)


# ---- open_clip (timm ViT trunks) -----------------------------------------------------------------
def _open_clip(p: Path, config_json: Path) -> VisionSource:
    data = read_json(config_json)
    model_cfg, pre = data.get("model_cfg", data), data.get("preprocess_cfg", {})
    names = ("open_clip_pytorch_model.bin", "open_clip_model.safetensors", "open_clip_pytorch_model.safetensors")
    weights = [p / n for n in names if (p / n).is_file()]
    if not weights:
        weights = [f for f in sorted(p.iterdir()) if f.suffix in WEIGHT_SUFFIXES and f.is_file()]
    if len(weights) != 1:
        raise ModelFormatError(f"model.vision.path {p}: an open_clip config ({config_json.name}) but "
                               f"{'no' if not weights else len(weights)} weight files beside it "
                               f"(open_clip_pytorch_model.bin, or one .pt/.bin/.safetensors): found {listing(p)}")
    return _open_clip_from(weights[0], model_cfg, pre, read_state_dict(weights[0], mmap=True))


def _open_clip_from(weights: Path, model_cfg: dict, pre: dict, state: dict) -> VisionSource:
    vcfg = model_cfg.get("vision_cfg", {})
    name = str(vcfg.get("timm_model_name") or "")
    trunk = {k[len("visual.trunk."):]: v for k, v in state.items() if k.startswith("visual.trunk.")}
    where = f"model.vision.path {weights}"
    if not name.startswith(("vit_", "eva")) or not trunk or "pos_embed" not in trunk:
        raise ModelFormatError(f"{where}: the open_clip vision tower '{name or vcfg}' is not a timm ViT trunk; "
                               f"rrg reads open_clip models with timm ViT trunks (vit_*, vit_*_dinov2)")
    if "norm_pre.weight" in trunk or "fc_norm.weight" in trunk or any(".q_norm." in k for k in trunk):
        raise ModelFormatError(f"{where}: timm trunk '{name}' has pre-norm / fc-norm / qk-norm layers, which the "
                               f"equivalent Hugging Face ViT lacks")
    dim = int(trunk["pos_embed"].shape[-1])
    patch = int(trunk["patch_embed.proj.weight"].shape[-1])
    layers = 1 + max(int(m.group(1)) for k in trunk if (m := re.match(r"blocks\.(\d+)\.", k)))
    inter = int(trunk["blocks.0.mlp.fc1.weight"].shape[0])
    size_word = next((w for w in TIMM_HEADS if f"_{w}_" in f"_{name}_"), None)
    heads = TIMM_HEADS[size_word] if size_word else max(1, dim // 64)
    if "reg_token" in trunk:
        raise ModelFormatError(f"{where}: timm trunk '{name}' has register tokens; rrg reads open_clip ViT trunks "
                               f"without them (a Hugging Face Dinov2-with-registers directory works)")
    prefix = 1
    grid = int(math.isqrt(int(trunk["pos_embed"].shape[1]) - prefix))
    image_size = int(vcfg.get("image_size") or grid * patch)
    image_size = image_size[0] if isinstance(image_size, (list, tuple)) else image_size
    layerscale = "blocks.0.ls1.gamma" in trunk
    qkv_bias = "blocks.0.attn.qkv.bias" in trunk
    common = dict(hidden_size=dim, num_hidden_layers=layers, num_attention_heads=heads, image_size=image_size,
                  patch_size=patch, num_channels=int(trunk["patch_embed.proj.weight"].shape[1]),
                  layer_norm_eps=1e-6, qkv_bias=qkv_bias, hidden_act="gelu")
    if layerscale:  # a DINOv2 trunk (LayerScale): BiomedCLIP-CXR's vit_base_patch14_dinov2
        from transformers import Dinov2Config, Dinov2Model

        if inter % dim:
            raise ModelFormatError(f"{where}: MLP width {inter} is not a whole multiple of width {dim}")
        config, cls = Dinov2Config(**common, mlp_ratio=inter // dim, use_mask_token=False), Dinov2Model
        mapper = _dinov2_key

    else:
        from transformers import ViTConfig, ViTModel

        config, cls = ViTConfig(**common, intermediate_size=inter), ViTModel
        mapper = _vit_key

    def weights_fn() -> dict[str, torch.Tensor]:
        return map_timm_vit(trunk, mapper, layerscale)

    mean, std = pre.get("mean"), pre.get("std")
    return VisionSource("open_clip", str(weights), config, cls, list(mean) if mean else None,
                        list(std) if std else None, image_size, f"open_clip {name}", _weights=weights_fn)


_VIT_BLOCK = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.o_proj",
              "mlp.fc1": "mlp.fc1", "mlp.fc2": "mlp.fc2"}
_DINO_BLOCK = {"norm1": "norm1", "norm2": "norm2", "attn.proj": "attention.o_proj", "mlp.fc1": "mlp.fc1",
               "mlp.fc2": "mlp.fc2", "ls1.gamma": "layer_scale1.lambda1", "ls2.gamma": "layer_scale2.lambda1"}
_EMBED = {"cls_token": "embeddings.cls_token", "pos_embed": "embeddings.position_embeddings",
          "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
          "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias", "norm.weight": "layernorm.weight",
          "norm.bias": "layernorm.bias"}


def _vit_key(block: int, rest: str) -> str:
    return f"layers.{block}.{_VIT_BLOCK[rest]}"


def _dinov2_key(block: int, rest: str) -> str:
    return f"encoder.layer.{block}.{_DINO_BLOCK[rest]}"


def map_timm_vit(trunk: dict[str, torch.Tensor], block_key: Callable[[int, str], str],
                 layerscale: bool) -> dict[str, torch.Tensor]:
    """timm ``VisionTransformer`` state dict -> the equivalent HF module's: exact names, q/k/v split.

    timm's fused ``attn.qkv`` rows are [q; k; v] (its forward reshapes the output to (3, heads, head_dim)),
    so the three equal row blocks are the HF query, key and value projections.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in trunk.items():
        if key in _EMBED:
            out[_EMBED[key]] = value
            continue
        m = re.match(r"blocks\.(\d+)\.(.+)\.(weight|bias|gamma)$", key)
        if m is None:
            if key.startswith("head.") or key in ("fc_norm.weight", "fc_norm.bias"):
                continue  # classifier head of the trunk: never part of the patch features
            raise ModelFormatError(f"timm ViT key {key!r} has no counterpart in the equivalent HF model")
        block, part, kind = int(m.group(1)), m.group(2), m.group(3)
        if part == "attn.qkv":
            prefix = block_key(block, "attn.proj").rsplit(".", 1)[0]
            for name, chunk in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                out[f"{prefix}.{name}.{kind}"] = chunk.clone()
            continue
        if kind == "gamma":
            out[block_key(block, f"{part}.gamma")] = value
            continue
        out[f"{block_key(block, part)}.{kind}"] = value
    return out


# ---- BioViL (hi-ml-multimodal) -------------------------------------------------------------------
def _biovil(path: Path, state: Optional[dict] = None) -> VisionSource:
    state = read_state_dict(path, mmap=True) if state is None else state
    where = f"model.vision.path {path}"
    if any(k.startswith(("encoder.backbone_to_vit", "encoder.vit_pooler")) for k in state):
        raise ModelFormatError(f"{where}: this is BioViL-T (a multi-image encoder with a transformer pooler); rrg "
                               f"reads BioViL's single-image ResNet-50 ({BIOVIL_FILE})")
    resnet = {k[len("encoder.encoder."):]: v for k, v in state.items() if k.startswith("encoder.encoder.")}
    if "conv1.weight" not in resnet:
        raise ModelFormatError(f"{where}: no hi-ml ImageModel ResNet (encoder.encoder.conv1.weight) in this file")
    from transformers import ResNetConfig, ResNetModel

    depths = [1 + max(int(m.group(1)) for k in resnet if (m := re.match(rf"layer{s}\.(\d+)\.", k)))
              for s in range(1, 5)]
    bottleneck = "layer1.0.conv3.weight" in resnet
    last_conv = "conv3" if bottleneck else "conv2"
    hidden = [int(resnet[f"layer{s}.0.{last_conv}.weight"].shape[0]) for s in range(1, 5)]
    config = ResNetConfig(num_channels=int(resnet["conv1.weight"].shape[1]),
                          embedding_size=int(resnet["conv1.weight"].shape[0]), hidden_sizes=hidden, depths=depths,
                          layer_type="bottleneck" if bottleneck else "basic", hidden_act="relu",
                          downsample_in_first_stage=False, downsample_in_bottleneck=False)

    def weights_fn() -> dict[str, torch.Tensor]:
        return map_torchvision_resnet(resnet)

    return VisionSource("biovil", str(path), config, ResNetModel, None, None, None,
                        f"BioViL ResNet-{sum(depths) * (3 if bottleneck else 2) + 2}", _weights=weights_fn)


def map_torchvision_resnet(resnet: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision ``ResNet`` state dict (hi-ml's ``ResNetHIML``) -> HF ``ResNetModel``'s, exact names.

    Both are the v1.5 ResNet (stride on the 3x3 convolution, 7x7 stem, 3x3 max-pool, BatchNorm eps
    1e-5); ``fc`` (the ImageNet classifier) is left out.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in resnet.items():
        if key.startswith("fc."):
            continue
        if m := re.match(r"(conv1|bn1)\.(.+)$", key):
            part = "convolution" if m.group(1) == "conv1" else "normalization"
            out[f"embedder.embedder.{part}.{m.group(2)}"] = value
            continue
        m = re.match(r"layer(\d)\.(\d+)\.(conv\d|bn\d|downsample\.[01])\.(.+)$", key)
        if m is None:
            raise ModelFormatError(f"torchvision ResNet key {key!r} has no counterpart in HF ResNetModel")
        stage, block, part, leaf = int(m.group(1)) - 1, int(m.group(2)), m.group(3), m.group(4)
        base = f"encoder.stages.{stage}.layers.{block}"
        if part.startswith("downsample"):
            kind = "convolution" if part.endswith("0") else "normalization"
            out[f"{base}.shortcut.{kind}.{leaf}"] = value
        else:
            kind = "convolution" if part.startswith("conv") else "normalization"
            out[f"{base}.layer.{int(part[-1]) - 1}.{kind}.{leaf}"] = value
    return out


def prefix_tokens(model) -> int:
    """Tokens before the patch grid in a ViT-style tower's output: class token and registers."""
    emb = getattr(model, "embeddings", None) or getattr(getattr(model, "vision_model", None), "embeddings", None)
    if emb is None:
        return 0
    n = 0
    if getattr(emb, "cls_token", None) is not None or getattr(emb, "class_embedding", None) is not None:
        n += 1
    reg = getattr(emb, "register_tokens", None)
    if reg is not None:
        n += int(reg.shape[1])
    return n


def accepts_interpolation(model) -> bool:
    import inspect

    return "interpolate_pos_encoding" in inspect.signature(model.forward).parameters


__all__ = ["ACCEPTED", "VisionSource", "detect", "map_timm_vit", "map_torchvision_resnet", "prefix_tokens",
           "resize_pos_embed", "accepts_interpolation"]
