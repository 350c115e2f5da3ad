"""R-GCN (basis decomposition) against a dense per-relation reference; fusion and attention blocks."""
import torch

from modeling.families.r2genkg.kg_modules import BiCrossAttention, QFormer, RGCNConv, RGCNEncoder, ScaleFusion, \
    dense_rgcn, pad_by_graph


def _graph(n, e, seed, rels=3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 8, generator=g, dtype=torch.float64), torch.randint(0, n, (2, e), generator=g),
            torch.randint(0, rels, (e,), generator=g))


def test_rgcn_equals_dense_reference_and_depends_on_relation_types():
    torch.manual_seed(0)
    conv = RGCNConv(8, 6, num_relations=3, num_bases=2).double()
    x, ei, et = _graph(12, 40, 1)
    sparse = conv(x, ei, et)
    assert torch.allclose(sparse, dense_rgcn(conv, x, ei, et), atol=1e-6, rtol=0)
    permuted = torch.tensor([1, 2, 0])[et]  # same edges, relation types permuted
    assert (conv(x, ei, permuted) - sparse).abs().max() > 1e-3
    assert torch.allclose(conv(x, ei, permuted), dense_rgcn(conv, x, ei, permuted), atol=1e-6, rtol=0)


def test_rgcn_output_independent_of_batch_composition():
    torch.manual_seed(0)
    conv = RGCNConv(8, 6, 3, 2).double()
    graphs = [_graph(n, 3 * n, s) for s, n in enumerate([5, 9, 7])]

    def union(gs):
        xs, eis, ets, off = [], [], [], 0
        for x, ei, et in gs:
            xs.append(x), eis.append(ei + off), ets.append(et)
            off += x.shape[0]
        return conv(torch.cat(xs), torch.cat(eis, 1), torch.cat(ets))

    alone = conv(*graphs[1])
    in_batch = union(graphs)[5:14]
    other_batch = union([graphs[1], _graph(11, 30, 9)])[:9]
    assert torch.allclose(alone, in_batch, atol=1e-12) and torch.allclose(alone, other_batch, atol=1e-12)


def test_encoder_fusion_qformer_and_bidirectional_attention_shapes_and_masking():
    torch.manual_seed(0)
    enc = RGCNEncoder(torch.randn(20, 16), torch.randint(0, 3, (20,)), dim=32)
    fuse, qf, bi = ScaleFusion(32, 2), QFormer(32, vis_dim=24, num_queries=14), BiCrossAttention(32)
    scales = []
    for ids, batch in ((torch.tensor([1, 2, 3, 7]), torch.tensor([0, 0, 1, 1])),
                       (torch.tensor([1, 2, 3, 4, 7, 8]), torch.tensor([0, 0, 0, 1, 1, 1]))):
        h = enc(ids, torch.tensor([[0], [1]]), torch.tensor([2]))
        scales.append(pad_by_graph(h, batch, 2))
    kg, mask = fuse(scales)
    assert kg.shape == (2, 1 + 2 + 3, 32) and mask[:, 0].all()
    vis = qf(torch.randn(2, 9, 24))
    assert vis.shape == (2, 14, 32)
    v2, k2 = bi(vis, kg, mask)
    assert v2.shape == vis.shape and k2.shape == kg.shape and torch.isfinite(v2).all()
    # an empty subgraph (only the null token) still gives finite outputs
    empty, emask = fuse([(torch.zeros(2, 1, 32), torch.zeros(2, 1, dtype=torch.bool))] * 2)
    assert torch.isfinite(bi(vis, empty, emask)[0]).all()
