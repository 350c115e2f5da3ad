"""R2GenKG (arXiv 2508.03426) on rrg's family contract: image + vision-token bank + per-study KG subgraphs -> LM.

As in the paper, the LM reads three things: the image, the knowledge graph and the disease-aware
vision tokens.  Vision encoder (any HF tower) -> its patch grid, projected to ``dim`` -> bidirectional
V2KG/KG2V cross-attention with the study's subgraph tokens (R-GCN with basis decomposition per scale
over the ``kg`` asset's node features, scales fused by self-attention): the image features and the
knowledge interact -> a Q-Former (14 learnable queries) reads the fused grid -> cross-attention
retrieves from the disease-aware vision-token bank (asset ``kg_bank``) -> ``kg_queries`` pooled KG
tokens.  The fused patch grid (``lm_patches``), the queries and the pooled KG tokens, projected to the
LM hidden size, replace the prompt's ``<image>`` placeholder.  Without the patch grid (``lm_patches:
false``) the LM sees only 14 + ``kg_queries`` tokens, each an attention average over the whole image:
on the demo that bottleneck lost the per-study findings and the LM learned the text prior alone.

Packing (``train.packing``, modeling/packing.py): every tensor above is per study, so a packed batch
(``segment_ids``, studies permuted to row-major packed order) gives each study the same features as
an unpacked one; the LM then sees block-diagonal attention and per-study position ids.

Batch tensors (all per study along dim 0, so ``shuffle`` moves them with the image):
``kg<i>_nodes`` (B, n) global node ids, -1 padded; ``kg<i>_edges`` (B, 3, e) local src, local dst,
relation, -1 padded; ``bank_gate`` (B,) 1.0 (0.0 blanks the bank retrieval).  The subgraph comes from
the image (``rrg kg attach`` retrieves it by image similarity), so ``black`` blanks the image, the
bank retrieval and the subgraphs; ``kg`` gives every study an empty subgraph.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable, Optional

import numpy as np
import torch
from safetensors.torch import load as load_bytes, load_file, save_file
from torch import nn

from configs.schema import ConfigError, to_dict
from modeling.attention import hf_attn_name
from shards.passes.kg.constants import BANK_ASSET, KG_ASSET, KG_SIDECAR, RELATIONS
from modeling.families.r2genkg.kg_modules import BiCrossAttention, CrossAttention, QFormer, RGCNEncoder, ScaleFusion, \
    pad_by_graph
from modeling.formats import build_causal_lm
from modeling.family import FAMILIES, ModelFamily, ParamGroup, read_model_json, write_model_json
from modeling.templates import get_template
from modeling.tokenizer import image_token_id
from modeling.tuning import TuningSpec
from modeling.vision import VisionEncoder, build_vision_encoder, image_stats
from modeling.vlm import (VLMFamily, black_image, build_prompt_sample, collate_prompt_batch, export_config,
                          export_paths, generate_from_embeds, image_text_embeds, lm_output, prompt_codec,
                          prompt_tokenizer, restore_lm_tuning, rows_of, save_backbone)


@dataclass
class R2GenKGOptions:
    num_scales: int = 3  # subgraph scales read from the kg sidecar (s0 .. s<n-1>)
    dim: int = 64  # width of the Q-Former, R-GCN and fusion blocks
    num_queries: int = 14  # Q-Former queries (one per CheXpert label in the paper)
    qformer_layers: int = 1
    rgcn_layers: int = 2
    num_bases: int = 2
    kg_queries: int = 4  # pooled KG tokens handed to the LM beside the visual queries
    heads: int = 4
    lm_patches: bool = True  # the LM also reads the KG-fused patch grid (the paper's image features)
    kg_dropout: float = 0.0  # training only: this fraction of studies gets an empty subgraph (modality dropout)

    def validate(self, key: str) -> None:
        if min(self.num_scales, self.dim, self.num_queries, self.rgcn_layers, self.num_bases, self.kg_queries) < 1:
            raise ConfigError(key, "every r2genkg option must be >= 1")
        if self.dim % self.heads:
            raise ConfigError(f"{key}.dim", f"must be divisible by heads={self.heads}")
        if not 0.0 <= self.kg_dropout < 1.0:
            raise ConfigError(f"{key}.kg_dropout", f"must be within [0, 1), got {self.kg_dropout}")


def kg_batch_keys(num_scales: int) -> tuple[str, ...]:
    return tuple(k for i in range(num_scales) for k in (f"kg{i}_nodes", f"kg{i}_edges"))


class R2GenKG(nn.Module):
    family_name = "r2genkg"

    def __init__(self, cfg, opts: R2GenKGOptions, vision: VisionEncoder, lm: nn.Module, tokenizer,
                 graph: dict[str, torch.Tensor], bank: torch.Tensor, asset_roots: dict[str, str]):
        super().__init__()
        d = opts.dim
        self.cfg, self.opts, self.vision, self.lm, self.tokenizer = cfg, opts, vision, lm, tokenizer
        self.asset_roots = dict(asset_roots)  # exported beside the model
        self.image_token_id = image_token_id(tokenizer)
        self.pad_token_id, self.eos_token_id = tokenizer.pad_token_id, tokenizer.eos_token_id
        self.patch_proj = nn.Linear(vision.hidden_size, d)
        self.qformer = QFormer(d, d, opts.num_queries, opts.qformer_layers, opts.heads)
        self.register_buffer("bank_tokens", bank.float(), persistent=True)
        self.bank_proj = nn.Linear(bank.shape[1], d)
        self.bank_attn = CrossAttention(d, opts.heads)
        self.kg_encoder = RGCNEncoder(graph["node_features"], graph["node_type"], d, len(RELATIONS), opts.num_bases,
                                      opts.rgcn_layers)
        self.fusion = ScaleFusion(d, opts.num_scales, opts.heads)
        self.bidirectional = BiCrossAttention(d, opts.heads)
        self.kg_pool_queries = nn.Parameter(torch.randn(1, opts.kg_queries, d) * 0.02)
        self.kg_pool = CrossAttention(d, opts.heads)
        hidden = lm.config.hidden_size
        # the residual streams above grow (Q-Former outputs reached std ~11, the LM's embeddings ~0.06): one
        # LayerNorm brings the visual + KG tokens to unit scale before the projection, as BLIP-2's Q-Former does
        self.out_norm = nn.LayerNorm(d)
        self.projector = nn.Sequential(nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden))
        self.kg_keys = kg_batch_keys(opts.num_scales)
        self.rrg_tuning = "full"

    # ---- features ------------------------------------------------------------------------
    def subgraph_tokens(self, kg: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        per_scale = []
        num_nodes = self.kg_encoder.node_features.shape[0]
        for i in range(self.opts.num_scales):
            nodes, edges = kg[f"kg{i}_nodes"], kg[f"kg{i}_edges"]
            bsz = nodes.shape[0]
            valid = nodes >= 0
            ids = nodes[valid]
            if ids.numel() and int(ids.max()) >= num_nodes:
                raise ValueError(f"kg subgraph node id {int(ids.max())} >= the KG's {num_nodes} nodes: the kg "
                                 f"sidecar was attached to another KG (run `rrg kg attach` again)")
            graph_of = torch.arange(bsz, device=nodes.device)[:, None].expand_as(nodes)[valid]
            offset = torch.cumsum(valid.sum(1), 0) - valid.sum(1)
            ev = edges[:, 0] >= 0
            src = (edges[:, 0] + offset[:, None])[ev]
            dst = (edges[:, 1] + offset[:, None])[ev]
            h = self.kg_encoder(ids, torch.stack([src, dst]), edges[:, 2][ev])
            per_scale.append(pad_by_graph(h, graph_of, bsz))
        return self.fusion(per_scale)

    def image_features(self, pixel_values: torch.Tensor, bank_gate: torch.Tensor, kg: dict[str, torch.Tensor]):
        """(B, [patches +] num_queries + kg_queries, lm_hidden): the KG-fused patch grid (``lm_patches``),
        the disease-aware queries and the pooled KG tokens, in that order."""
        patches = self.patch_proj(self.vision(pixel_values))  # (B, P, d): the image's vision tokens
        kg_tok, kg_mask = self.subgraph_tokens(kg)  # (B, 1 + nodes of every scale, d), a null token first
        patches, kg_tok = self.bidirectional(patches, kg_tok, kg_mask)  # V2KG, then KG2V
        vis = self.qformer(patches)  # (B, num_queries, d)
        bank = self.bank_proj(self.bank_tokens).unsqueeze(0).expand(vis.shape[0], -1, -1)
        vis = vis + bank_gate.to(vis.dtype)[:, None, None] * (self.bank_attn(vis, bank) - vis)  # disease-aware
        pooled = self.kg_pool(self.kg_pool_queries.expand(vis.shape[0], -1, -1), kg_tok, kg_mask)
        parts = [patches, vis, pooled] if self.opts.lm_patches else [vis, pooled]
        return self.projector(self.out_norm(torch.cat(parts, 1)))

    def _kg(self, kg: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The batch's subgraphs; in training, ``kg_dropout`` of the studies get an empty one.

        The subgraph is retrieved by image similarity from the training reports, an easy cue: without
        dropout the LM learned to read it and little of the image itself.  Dropping it for some studies
        (as nn.Dropout does, from torch's generator) makes the image carry the findings too.
        """
        if set(kg) != set(self.kg_keys):
            raise TypeError(f"r2genkg expects batch keys {sorted(self.kg_keys)}, got {sorted(kg)}")
        p = self.opts.kg_dropout
        if not (self.training and p > 0):
            return kg
        first = kg[self.kg_keys[0]]
        drop = torch.rand(first.shape[0], device=first.device) < p
        return {k: v.masked_fill(drop.view(-1, *[1] * (v.ndim - 1)), -1) for k, v in kg.items()}

    def embed(self, pixel_values, input_ids, attention_mask, bank_gate, kg, labels=None):
        feats = self.image_features(pixel_values, bank_gate, self._kg(kg))
        return image_text_embeds(self.lm, input_ids, attention_mask, feats, self.image_token_id, labels)

    def forward(self, pixel_values, input_ids, attention_mask=None, bank_gate=None, labels=None, sample_weight=None,
                segment_ids=None, **kg):
        """``segment_ids`` instead of ``attention_mask``: a packed batch (modeling/packing.py)."""
        packed = segment_ids is not None
        if bank_gate is None:
            bank_gate = torch.ones(pixel_values.shape[0], device=pixel_values.device)
        embeds, mask, labels = self.embed(pixel_values, input_ids, segment_ids if packed else attention_mask,
                                          bank_gate, kg, labels)
        return lm_output(self.lm, embeds, mask, labels, sample_weight, packed, self.cfg.attention)

    @torch.no_grad()
    def generate(self, pixel_values, input_ids, attention_mask, bank_gate, max_new_tokens: int, num_beams: int = 1,
                 synced_gpus: bool = False, **kg):
        embeds, mask, _ = self.embed(pixel_values, input_ids, attention_mask, bank_gate, kg)
        return generate_from_embeds(self.lm, embeds, mask, max_new_tokens, num_beams, synced_gpus, self.pad_token_id,
                                    self.eos_token_id)

    def new_modules(self) -> list[nn.Module]:
        return [self.patch_proj, self.qformer, self.bank_proj, self.bank_attn, self.kg_encoder, self.fusion,
                self.bidirectional, self.kg_pool, self.out_norm, self.projector]


# ---- samples ------------------------------------------------------------------------------
def kg_rows(sample: Any, num_scales: int) -> dict[str, torch.Tensor]:
    """The study's subgraph tensors from the ``kg`` sidecar, checked; a bad one raises naming the study."""
    t = sample.tensors.get(KG_SIDECAR)
    if t is None:
        raise ValueError(f"study {sample.key}: no '{KG_SIDECAR}' subgraph tensors (run `rrg kg attach`)")
    out = {}
    for i in range(num_scales):
        try:
            nodes, ei, et = t[f"s{i}_node_ids"], t[f"s{i}_edge_index"], t[f"s{i}_edge_type"]
        except KeyError as err:
            raise ValueError(f"study {sample.key}: kg sidecar lacks {err} (attached with fewer scales?)") from None
        n = len(nodes)
        if ei.ndim != 2 or ei.shape[0] != 2 or ei.shape[1] != len(et) or (ei.size and (ei.min() < 0 or ei.max() >= n)) \
                or (et.size and et.max() >= len(RELATIONS)) or (n and nodes.min() < 0):
            raise ValueError(f"study {sample.key}: kg subgraph scale {i} is corrupt (edge indices/types out of range)")
        out[f"kg{i}_nodes"] = torch.from_numpy(nodes.astype("int64"))
        out[f"kg{i}_edges"] = torch.from_numpy(np.concatenate([ei.astype("int64"), et.astype("int64")[None]], 0))
    return out


def build_row(sample: Any, *, num_scales: int, base: Callable) -> list[dict]:
    """The prompt row of :func:`modeling.vlm.build_prompt_sample` plus the study's subgraphs."""
    row = base(sample)
    row.update(kg_rows(sample, num_scales))
    return [row]


def collate_kg(items: list[dict], pad_token_id: int, num_scales: int) -> dict:
    items = rows_of(items)
    batch = collate_prompt_batch(items, pad_token_id)
    bsz = len(items)
    for i in range(num_scales):
        n = max([1] + [len(it[f"kg{i}_nodes"]) for it in items])
        e = max([1] + [it[f"kg{i}_edges"].shape[1] for it in items])
        nodes, edges = torch.full((bsz, n), -1, dtype=torch.long), torch.full((bsz, 3, e), -1, dtype=torch.long)
        for b, it in enumerate(items):
            nodes[b, : len(it[f"kg{i}_nodes"])] = it[f"kg{i}_nodes"]
            edges[b, :, : it[f"kg{i}_edges"].shape[1]] = it[f"kg{i}_edges"]
        batch[f"kg{i}_nodes"], batch[f"kg{i}_edges"] = nodes, edges
    batch["bank_gate"] = torch.ones(bsz)
    return batch


def read_assets(assets: Optional[dict[str, Any]]) -> tuple[dict[str, torch.Tensor], torch.Tensor, dict[str, str]]:
    """(graph tensors, bank tokens, asset roots) from ``{"kg": Asset|dir, "kg_bank": Asset|dir}``."""
    from shards.sidecars import Asset, load_asset

    assets = assets or {}
    missing = [n for n in (KG_ASSET, BANK_ASSET) if n not in assets]
    if missing:
        raise ConfigError("model.family", f"r2genkg needs the dataset assets {missing}: run `rrg kg build` first")
    if all(isinstance(assets[n], dict) for n in (KG_ASSET, BANK_ASSET)):  # shape stand-ins (planning_assets)
        return dict(assets[KG_ASSET]), assets[BANK_ASSET]["tokens"], {}
    loaded = {n: a if isinstance(a, Asset) else load_asset(a) for n, a in assets.items() if n in (KG_ASSET, BANK_ASSET)}
    graph = load_bytes(loaded[KG_ASSET].read_bytes("graph.safetensors"))
    bank = load_bytes(loaded[BANK_ASSET].read_bytes("bank.safetensors"))["tokens"]
    return graph, bank, {n: str(a.root) for n, a in loaded.items()}


# ---- the family ---------------------------------------------------------------------------
@FAMILIES.register("r2genkg")
class R2GenKGFamily(ModelFamily):
    """Q-Former + vision-token bank + multi-scale R-GCN subgraphs + bidirectional cross-attention -> LM."""

    name = "r2genkg"
    Options = R2GenKGOptions
    asset_names = (KG_ASSET, BANK_ASSET)
    supports_packing = True
    def image_tokens(self, patches: int) -> int:
        """The LM sees the patch grid (``lm_patches``: the tower's own token count, e.g. 49 for a Swin at 224 px),
        the Q-Former's queries and the pooled KG tokens."""
        return (patches if self.opts.lm_patches else 0) + self.opts.num_queries + self.opts.kg_queries

    def planning_assets(self, kg_nodes: int = 2477, feature_dim: int = 768, bank_dim: int = 2048) -> dict:
        """Shape-only KG and bank (default: M3KG's 2,477 entities, BERT-size features) for ``rrg plan``."""
        graph = {"node_features": torch.zeros(kg_nodes, feature_dim), "node_type": torch.zeros(kg_nodes, dtype=torch.long)}
        return {KG_ASSET: graph, BANK_ASSET: {"tokens": torch.zeros(14, bank_dim)}}

    ablations = {"black": "image, vision-token-bank retrieval and KG subgraphs (retrieved by image) blanked",
                 "shuffle": "each study gets another study's image and subgraphs",
                 "kg": "every study gets an empty KG subgraph"}

    def __init__(self, cfg):
        super().__init__(cfg)
        self.opts.validate("model.options")
        self.image_keys = ("pixel_values", "bank_gate", *kg_batch_keys(self.opts.num_scales))

    def tokenizer(self, train_texts: Optional[Iterable[str]] = None, save_dir: Optional[str] = None):
        return prompt_tokenizer(self.cfg, self._prompts, train_texts, save_dir)

    def _prompts(self) -> list[str]:
        """The templated prompt (what a trained tokenizer must cover beside the reports)."""
        return [get_template(self.cfg.lm.chat_template).prompt(self.cfg.prompt)]

    def build_model(self, tok, assets: Optional[dict[str, Any]] = None) -> R2GenKG:
        graph, bank, roots = read_assets(assets)
        attn = hf_attn_name(self.cfg.attention)
        vision = build_vision_encoder(self.cfg.vision, attn)
        lm = build_causal_lm(self.cfg.lm, tok, attn)
        return R2GenKG(self.cfg, self.opts, vision, lm, tok, graph, bank, roots)

    def trainable_groups(self, model: R2GenKG, mode: str, spec: Optional[TuningSpec] = None) -> list[ParamGroup]:
        """``kg_fusion`` (Q-Former, bank, R-GCN, fusion, cross-attention, projector) always; + ``lora`` or ``lm``
        (+ ``vision`` with ``train_vision``)."""
        groups = [ParamGroup("kg_fusion", [p for m in model.new_modules() for p in m.parameters()]
                             + [model.kg_pool_queries]), *VLMFamily.lm_groups(model, mode, spec)]
        model.rrg_tuning = mode
        return groups

    def derived_inputs(self) -> tuple[str, ...]:
        """The per-study subgraphs are retrieved by image similarity (``rrg kg attach``)."""
        return (KG_SIDECAR,)

    def sample_builder(self, tok, mode: str, target: str = "report",
                       gen: Optional[Any] = None) -> Callable[[Any], list[dict]]:
        mean, std = image_stats(self.cfg.vision)
        base = partial(build_prompt_sample, tok=tok, cfg=self.cfg, train=mode == "train", mean=mean, std=std,
                       prompt=prompt_codec(tok, self.cfg), target=target)
        return partial(build_row, num_scales=self.opts.num_scales, base=base)

    def collate(self, tok) -> Callable[[list[dict]], dict]:
        return partial(collate_kg, pad_token_id=tok.pad_token_id, num_scales=self.opts.num_scales)

    def ablate(self, batch: dict, kind: str) -> dict:
        if kind not in self.ablations or kind == "shuffle":
            return super().ablate(batch, kind)
        out = dict(batch)
        for k in kg_batch_keys(self.opts.num_scales):
            out[k] = torch.full_like(batch[k], -1)
        if kind == "black":  # an all-black radiograph after normalisation, no bank retrieval, no subgraph
            out["pixel_values"] = black_image(batch["pixel_values"], self.cfg.vision)
            out["bank_gate"] = torch.zeros_like(batch["bank_gate"])
        return out

    # ---- export ---------------------------------------------------------------------------
    def save_pretrained(self, model: R2GenKG, directory: str, merge: bool = False) -> None:
        adapter = save_backbone(directory, model.lm, model.vision, self.cfg.vision, model.tokenizer, merge)
        own = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()
               if not k.startswith(("lm.", "vision."))}
        save_file(own, os.path.join(directory, "r2genkg.safetensors"))
        for name, root in model.asset_roots.items():
            target = Path(directory) / "assets" / name
            if Path(root).resolve() != target.resolve():
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(root, target)
        write_model_json(directory, {"family": self.name, "model_config": to_dict(export_config(self.cfg)),
                                     "options": to_dict(self.opts), "tuning": model.rrg_tuning, "lm_adapter": adapter})

    @classmethod
    def load_pretrained(cls, directory: str) -> R2GenKG:
        _, cfg, meta = read_model_json(directory)
        export_paths(cfg, directory)
        cfg.options = meta["options"]
        family = cls(cfg)
        assets = {n: os.path.join(directory, "assets", n) for n in cls.asset_names}
        model = family.build_model(family.tokenizer(), assets)
        missing, unexpected = model.load_state_dict(load_file(os.path.join(directory, "r2genkg.safetensors")),
                                                    strict=False)
        bad = [k for k in missing if not k.startswith(("lm.", "vision."))] + list(unexpected)
        if bad:
            raise ValueError(f"{directory}: r2genkg.safetensors does not match the model ({bad[:5]})")
        restore_lm_tuning(model, directory, meta)
        return model
