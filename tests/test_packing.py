"""Sequence packing: packed and unpacked batches give the same loss and gradients; rows are well filled."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from modeling.family import build_family
from modeling.packing import pack_batch, plan_rows, segment_attention_mask, segment_position_ids
from modeling.tokenizer import image_token_id
from modeling.tuning import LoraConfig, TuningSpec, apply_tuning
from test_modeling import REPORTS, make_samples, tiny_cfg

LONGER = REPORTS + [
    "FINDINGS: Lines and tubes in place. Endotracheal tube 4 cm above the carina. Enteric tube in the stomach. "
    "Bibasilar atelectasis, no pneumothorax. IMPRESSION: Support devices as above.",
    "IMPRESSION: No change.",
]


@pytest.fixture(scope="module")
def packed_setup():
    fam = build_family(tiny_cfg())
    tok = fam.tokenizer(LONGER)
    torch.manual_seed(0)
    model = fam.build_model(tok)
    apply_tuning(model, fam, TuningSpec("full", LoraConfig(), True))
    samples = make_samples(7)
    for i, s in enumerate(samples):
        s.record["report"]["text"] = LONGER[i % len(LONGER)]
    build = fam.sample_builder(tok, "train")
    batch = fam.collate(tok)([build(s) for s in samples])
    batch["sample_weight"] = torch.tensor([1.0, 0.5, 2.0, 1.0, 0.0, 1.0, 1.5])  # a refilled slot weighs 0
    return fam, tok, model, batch


def loss_and_grads(model, batch):
    m = copy.deepcopy(model).train()
    out = m(**{k: v for k, v in batch.items() if torch.is_tensor(v)})
    out.loss.backward()
    return out.loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}, out


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_equals_unpacked_loss_and_grads(packed_setup, impl):
    fam, tok, model, batch = packed_setup
    model = copy.deepcopy(model)
    model.cfg.attention = impl
    n_img = model.vision.num_patches
    text = batch["attention_mask"].sum(1).tolist()
    max_len = (sum(text) + 7 * n_img) // 2 + 40  # forces 2+ rows of several studies each
    packed = pack_batch(batch, max_len, image_token_id(tok), n_img)
    rows = packed["input_ids"].shape[0]
    assert 2 <= rows < 7 and packed["pixel_values"].shape[0] == 7
    assert sorted(packed["keys"]) == sorted(batch["keys"])
    # the same weighted-token count (loss weights count studies, not rows)
    assert float(packed["sample_weight"].sum()) == float(batch["sample_weight"].sum())
    l0, g0, o0 = loss_and_grads(model, batch)
    l1, g1, o1 = loss_and_grads(model, packed)
    torch.testing.assert_close(o1.weight_sum, o0.weight_sum)
    torch.testing.assert_close(l1, l0, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys() and len(g0) > 10
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)
    # isolation is real: letting studies see each other changes the loss
    with torch.no_grad():
        leaky = dict(packed, segment_ids=(packed["segment_ids"] > 0).long())
        assert abs(float(model(**{k: v for k, v in leaky.items() if torch.is_tensor(v)}).loss) - float(l0)) > 1e-4


def test_positions_masks_and_plan():
    seg = torch.tensor([[1, 1, 1, 2, 2, 0], [1, 2, 2, 2, 3, 3]])
    assert segment_position_ids(seg).tolist() == [[0, 1, 2, 0, 1, 0], [0, 0, 1, 2, 0, 1]]
    m = segment_attention_mask(seg)[:, 0]
    assert m[0, 4].tolist() == [False, False, False, True, True, False]  # second study, causal, not the first
    assert m[0, 5].tolist() == [False] * 5 + [True]  # padding sees only itself
    assert not m[1, 1, 0] and m[1, 3, 1]
    rows = plan_rows([50, 40, 30, 30, 20, 10], 100)
    assert sorted(i for r in rows for i in r) == list(range(6)) and all(
        sum([50, 40, 30, 30, 20, 10][i] for i in r) <= 100 for r in rows)
    assert len(rows) == 2  # 180 positions fit two rows of 90
    with pytest.raises(ValueError, match="max_len"):
        plan_rows([120], 100)


def test_padding_efficiency_mimic_like_lengths():
    """Reports with a MIMIC-like length distribution (median ~60 words, tail past 200) pack to >= 0.95."""
    from trainer.bench.packing import mimic_like_lengths, packing_efficiency

    lengths = mimic_like_lengths(4096, seed=0)
    assert 50 <= np.median(lengths) <= 110 and np.max(lengths) > 260
    eff = packing_efficiency(lengths, batch_size=16, max_len=2048, image_tokens=64)  # the demo's image tokens
    assert eff["unpacked"] < 0.6 and eff["packed"] >= 0.95 and eff["packed_lm"] >= 0.95
    real = packing_efficiency(lengths, batch_size=8, max_len=4096, image_tokens=576)  # a 336-px ViT-L/14
    assert real["unpacked_lm"] < 0.9 and real["packed_lm"] >= 0.95


def test_radixpert_packed_masks_follow_their_study():
    """A family built on the shared pieces (per-study ``masks`` ride along, permuted with their images)."""
    from test_radixpert import cfg as rx_cfg, samples as rx_samples

    fam = build_family(rx_cfg())
    tok = fam.tokenizer(LONGER)
    torch.manual_seed(0)
    model = fam.build_model(tok)
    batch = fam.collate(tok)([fam.sample_builder(tok, "train")(s) for s in rx_samples(5)])
    n = model.vision.num_patches
    packed = pack_batch(batch, int(batch["attention_mask"].sum()) // 2 + 2 * n, image_token_id(tok), n)
    assert packed["input_ids"].shape[0] >= 2 and packed["masks"].shape == batch["masks"].shape
    order = [batch["keys"].index(k) for k in packed["keys"]]
    assert torch.equal(packed["masks"], batch["masks"][order])
    with torch.no_grad():
        a = model(**{k: v for k, v in batch.items() if torch.is_tensor(v)}).loss
        b = model(**{k: v for k, v in packed.items() if torch.is_tensor(v)}).loss
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
