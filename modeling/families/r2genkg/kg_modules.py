"""R2GenKG's building blocks, pure torch: R-GCN, multi-scale fusion, Q-Former, bank and bidirectional attention.

Graphs come as one disjoint union per batch (PyG style): ``x`` (N, D) node features, ``edge_index``
(2, E) global node indices, ``edge_type`` (E,), ``batch`` (N,) graph of each node.  Messages only
follow edges, so a graph's output never depends on the other graphs of the batch.

* :class:`RGCNConv` - relational graph convolution with basis decomposition (Schlichtkrull et al.):
  ``W_r = sum_b a_rb V_b``, ``h_i' = W_0 h_i + b + sum_r sum_{j in N_r(i)} W_r h_j / |N_r(i)|``;
  :func:`dense_rgcn` is the per-relation dense reference it is tested against.
* :class:`ScaleFusion` - node tokens of every scale (+ a scale embedding) fused by self-attention.
* :class:`QFormer` - learnable queries (14, one per CheXpert label) reading patch features.
* :class:`CrossAttention` / :class:`BiCrossAttention` - visual queries -> vision-token bank, and
  V2KG (KG tokens read the visual queries) + KG2V (visual queries read the KG tokens).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn


class RGCNConv(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_relations: int, num_bases: int):
        super().__init__()
        self.num_relations, self.num_bases = num_relations, num_bases
        self.bases = nn.Parameter(torch.empty(num_bases, in_dim, out_dim))
        self.comp = nn.Parameter(torch.empty(num_relations, num_bases))
        self.root = nn.Linear(in_dim, out_dim)
        nn.init.xavier_uniform_(self.bases)
        nn.init.xavier_uniform_(self.comp)

    def relation_weights(self) -> torch.Tensor:
        """(R, in, out): the per-relation matrices the bases span."""
        return torch.einsum("rb,bio->rio", self.comp, self.bases)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        # no shortcut when there are no edges: the bases then still get a (zero) gradient, so every data-parallel
        # rank reduces the same set of gradients even when a rank's batch has only empty subgraphs
        out = self.root(x)
        src, dst, rel = edge_index[0].long(), edge_index[1].long(), edge_type.long()
        per_basis = torch.einsum("ni,bio->nbo", x, self.bases)  # (N, B, out): each node through each basis
        msg = torch.einsum("eb,ebo->eo", self.comp[rel], per_basis[src])  # W_rel h_src, basis-combined
        slot = dst * self.num_relations + rel  # mean over the neighbours of one relation
        deg = torch.zeros(x.shape[0] * self.num_relations, device=x.device, dtype=x.dtype)
        deg = deg.index_add(0, slot, torch.ones_like(slot, dtype=x.dtype))
        msg = msg / deg[slot].unsqueeze(1)
        return out.index_add(0, dst, msg.to(out.dtype))


def dense_rgcn(conv: RGCNConv, x: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
    """Reference: one dense row-normalised adjacency and one full weight matrix per relation."""
    n = x.shape[0]
    out = conv.root(x)
    weights = conv.relation_weights()
    for r in range(conv.num_relations):
        sel = edge_type == r
        adj = torch.zeros(n, n, dtype=x.dtype)
        adj[edge_index[1][sel].long(), edge_index[0][sel].long()] += 1  # duplicates count twice, as messages do
        deg = adj.sum(1, keepdim=True)
        out = out + torch.where(deg > 0, adj / deg.clamp(min=1), adj) @ x @ weights[r]
    return out


class RGCNEncoder(nn.Module):
    """Frozen KG node features -> hidden size -> ``layers`` R-GCN layers (ReLU between)."""

    def __init__(self, node_features: torch.Tensor, node_types: torch.Tensor, dim: int, num_relations: int = 3,
                 num_bases: int = 2, layers: int = 2):
        super().__init__()
        self.register_buffer("node_features", node_features.float(), persistent=True)
        self.register_buffer("node_types", node_types.long(), persistent=True)
        self.inp = nn.Linear(node_features.shape[1], dim)
        self.type_emb = nn.Embedding(int(node_types.max()) + 1 if node_types.numel() else 1, dim)
        self.convs = nn.ModuleList(RGCNConv(dim, dim, num_relations, num_bases) for _ in range(layers))

    def forward(self, node_ids: torch.Tensor, edge_index: torch.Tensor, edge_type: torch.Tensor) -> torch.Tensor:
        ids = node_ids.long()
        h = self.inp(self.node_features[ids]) + self.type_emb(self.node_types[ids])
        for i, conv in enumerate(self.convs):
            h = conv(h, edge_index, edge_type)
            if i < len(self.convs) - 1:
                h = torch.relu(h)
        return h


def pad_by_graph(h: torch.Tensor, batch: torch.Tensor, num_graphs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, D) + graph of each node -> (G, n_max, D) and a bool mask (True = a real node)."""
    counts = torch.bincount(batch, minlength=num_graphs)
    n_max = max(int(counts.max()) if counts.numel() else 0, 1)
    starts = torch.cumsum(counts, 0) - counts
    pos = torch.arange(h.shape[0], device=h.device) - starts[batch]
    out = h.new_zeros(num_graphs, n_max, h.shape[1])
    mask = torch.zeros(num_graphs, n_max, dtype=torch.bool, device=h.device)
    out[batch, pos] = h
    mask[batch, pos] = True
    return out, mask


class ScaleFusion(nn.Module):
    """Node tokens of all scales (+ scale embedding, + one always-present null token) fused by self-attention."""

    def __init__(self, dim: int, num_scales: int, heads: int = 4):
        super().__init__()
        self.scale_emb = nn.Embedding(num_scales, dim)
        self.null = nn.Parameter(torch.zeros(1, 1, dim))
        self.layer = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)

    def forward(self, per_scale: list[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
        toks = [t + self.scale_emb.weight[i] for i, (t, _) in enumerate(per_scale)]
        g = toks[0].shape[0]
        x = torch.cat([self.null.expand(g, 1, -1)] + toks, 1)
        mask = torch.cat([torch.ones(g, 1, dtype=torch.bool, device=x.device)] + [m for _, m in per_scale], 1)
        return self.layer(x, src_key_padding_mask=~mask), mask


class CrossAttention(nn.Module):
    """Pre-norm residual cross-attention + FFN: ``q`` reads ``kv`` (``kv_mask`` True = attend)."""

    def __init__(self, dim: int, heads: int = 4, kv_dim: Optional[int] = None):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True, kdim=kv_dim or dim, vdim=kv_dim or dim)
        self.ffn = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, q: torch.Tensor, kv: torch.Tensor, kv_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        a, _ = self.attn(self.norm(q), kv, kv, key_padding_mask=None if kv_mask is None else ~kv_mask,
                         need_weights=False)
        q = q + a
        return q + self.ffn(q)


class QFormer(nn.Module):
    """``num_queries`` learnable queries; per layer self-attention over the queries, then cross-attention to patches."""

    def __init__(self, dim: int, vis_dim: int, num_queries: int = 14, layers: int = 2, heads: int = 4):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(1, num_queries, dim) * 0.02)
        self.self_layers = nn.ModuleList(nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout=0.0, batch_first=True)
                                         for _ in range(layers))
        self.cross = nn.ModuleList(CrossAttention(dim, heads, kv_dim=vis_dim) for _ in range(layers))

    def forward(self, patches: torch.Tensor) -> torch.Tensor:
        q = self.queries.expand(patches.shape[0], -1, -1)
        for sa, ca in zip(self.self_layers, self.cross):
            q = ca(sa(q), patches)
        return q


class BiCrossAttention(nn.Module):
    """V2KG (KG tokens read the visual queries), then KG2V (visual queries read the updated KG tokens)."""

    def __init__(self, dim: int, heads: int = 4):
        super().__init__()
        self.v2kg = CrossAttention(dim, heads)
        self.kg2v = CrossAttention(dim, heads)

    def forward(self, vis: torch.Tensor, kg: torch.Tensor, kg_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        kg = self.v2kg(kg, vis)
        vis = self.kg2v(vis, kg, kg_mask)
        return vis, kg
