"""R2GenKG with sequence packing: per-study image, bank and subgraph features follow their study, so packed
and unpacked batches give the same loss and gradients (modeling/packing.py)."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from modeling.family import build_family
from modeling.packing import pack_batch
from modeling.tokenizer import image_token_id
from modeling.tuning import LoraConfig, TuningSpec, apply_tuning
from test_modeling import make_samples, tiny_cfg
from test_packing import LONGER

SCALES = (3, 5)
NODES = 12


def kg_assets(seed: int = 0) -> dict:
    """In-memory stand-ins for the ``kg`` and ``kg_bank`` assets (what `rrg kg build` writes)."""
    g = torch.Generator().manual_seed(seed)
    graph = {"node_features": torch.randn(NODES, 8, generator=g), "node_type": torch.randint(0, 3, (NODES,), generator=g)}
    return {"kg": graph, "kg_bank": {"tokens": torch.randn(14, 6, generator=g)}}


def with_subgraphs(samples, seed: int = 0):
    """Each study gets its own multi-scale subgraph, as the ``kg`` sidecar holds (one study: an empty one)."""
    rng = np.random.default_rng(seed)
    for j, s in enumerate(samples):
        nodes = rng.permutation(NODES)
        t = {}
        for i, scale in enumerate(SCALES):
            n = 0 if j == 2 else scale
            e = 2 * n
            t[f"s{i}_node_ids"] = nodes[:n].astype(np.int16)
            t[f"s{i}_edge_index"] = rng.integers(0, max(n, 1), (2, e)).astype(np.int16)
            t[f"s{i}_edge_type"] = rng.integers(0, 3, e).astype(np.uint8)
        s.tensors = {"kg": t}
    return samples


@pytest.fixture(scope="module")
def kg_setup():
    cfg = tiny_cfg()
    cfg.family, cfg.options = "r2genkg", {"num_scales": len(SCALES), "dim": 16, "num_queries": 3, "kg_queries": 2}
    fam = build_family(cfg)
    tok = fam.tokenizer(LONGER)
    torch.manual_seed(0)
    model = fam.build_model(tok, kg_assets())
    apply_tuning(model, fam, TuningSpec("full", LoraConfig(), True))
    samples = with_subgraphs(make_samples(7))
    for i, s in enumerate(samples):
        s.record["report"]["text"] = LONGER[i % len(LONGER)]
    build = fam.sample_builder(tok, "train")
    batch = fam.collate(tok)([build(s) for s in samples])
    batch["sample_weight"] = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.0, 1.0, 1.5])
    return fam, tok, model, batch


def _loss_and_grads(model, batch):
    m = copy.deepcopy(model).train()
    out = m(**{k: v for k, v in batch.items() if torch.is_tensor(v)})
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_r2genkg_packed_equals_unpacked_loss_and_grads(kg_setup, impl):
    fam, tok, model, batch = kg_setup
    model = copy.deepcopy(model)
    model.cfg.attention = impl
    n_img = fam.image_tokens(model.vision.num_patches)  # patch grid + queries + pooled KG tokens
    text = batch["attention_mask"].sum(1).tolist()
    packed = pack_batch(batch, (sum(text) + 7 * n_img) // 2 + 40, image_token_id(tok), n_img)
    assert 2 <= packed["input_ids"].shape[0] < 7 and packed["pixel_values"].shape[0] == 7
    order = [batch["keys"].index(k) for k in packed["keys"]]
    assert order != list(range(7))  # studies really moved, and their subgraphs moved with them
    for key in ("kg0_nodes", "kg1_edges", "bank_gate"):
        assert torch.equal(packed[key], batch[key][order])
    o0, g0 = _loss_and_grads(model, batch)
    o1, g1 = _loss_and_grads(model, packed)
    torch.testing.assert_close(o1.weight_sum, o0.weight_sum)
    torch.testing.assert_close(o1.loss, o0.loss, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys()
    for part in ("patch_proj", "qformer", "kg_encoder", "fusion", "bidirectional", "kg_pool", "bank_attn", "lm."):
        assert any(n.startswith(part) for n in g0), part  # every new module is on the gradient path
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # isolation is real: letting studies see each other changes the loss
        leaky = dict(packed, segment_ids=(packed["segment_ids"] > 0).long())
        assert abs(float(model(**{k: v for k, v in leaky.items() if torch.is_tensor(v)}).loss) - float(o0.loss)) > 1e-4


def test_r2genkg_image_tokens_count_what_the_lm_sees(kg_setup):
    fam, tok, model, batch = kg_setup
    feats = model.image_features(batch["pixel_values"], batch["bank_gate"], {k: batch[k] for k in model.kg_keys})
    assert feats.shape[1] == fam.image_tokens(model.vision.num_patches) == model.vision.num_patches + 3 + 2


def test_r2genkg_every_trainable_parameter_gets_a_gradient_when_every_subgraph_is_empty(kg_setup):
    """A data-parallel rank whose batch has only empty subgraphs (normal neighbours, kg_dropout) must reduce
    the same gradients as the other ranks: every trainable parameter gets one (zero where unused)."""
    fam, tok, model, batch = kg_setup
    m = copy.deepcopy(model).train()
    empty = fam.ablate(batch, "kg")
    m(**{k: v for k, v in empty.items() if torch.is_tensor(v)}).loss.backward()
    missing = [n for n, p in m.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing


def test_r2genkg_kg_dropout_empties_subgraphs_in_training_only(kg_setup):
    fam, tok, model, batch = kg_setup
    m = copy.deepcopy(model)
    m.opts = type(m.opts)(**{**vars(m.opts), "kg_dropout": 0.5})
    kg = {k: batch[k] for k in m.kg_keys}
    torch.manual_seed(0)
    m.train()
    dropped = m._kg(kg)
    gone = (dropped["kg0_nodes"] < 0).all(1) & (kg["kg0_nodes"] >= 0).any(1)
    assert 0 < int(gone.sum()) < len(gone)  # some studies lost their subgraph, at every scale together
    assert all(((dropped[k] < 0).flatten(1).all(1) | ~gone).all() for k in m.kg_keys)
    m.eval()
    assert all(torch.equal(m._kg(kg)[k], kg[k]) for k in m.kg_keys)  # never at evaluation
