"""Radixpert: exactly the MLP, the 1x1 convolution and LoRA train; masks reach generation; ablations."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from configs.schema import from_dict
from modeling.config import LoraConfig, ModelConfig
from modeling.family import GenConfig, build_family, load_pretrained
from modeling.tuning import TuningSpec, apply_tuning
from shards.records import DecodedSample

CHANNELS = ["left_lung", "right_lung", "heart", "mediastinum", "diaphragm"]
REPORTS = ["Derrame pleural izquierdo pequeño.", "Cardiomegalia leve. Sin derrame pleural.",
           "Sin hallazgos patológicos significativos."]


def cfg(**options) -> ModelConfig:
    return from_dict(ModelConfig, {
        "family": "radixpert",
        "vision": {"image_size": 32, "hf_config": {"model_type": "siglip_vision_model", "hidden_size": 32,
                                                   "intermediate_size": 64, "num_hidden_layers": 1,
                                                   "num_attention_heads": 2, "patch_size": 8, "image_size": 32}},
        "lm": {"tokenizer_vocab_size": 320, "hf_config": {"model_type": "llama", "hidden_size": 48,
                                                          "intermediate_size": 96, "num_hidden_layers": 2,
                                                          "num_attention_heads": 4, "num_key_value_heads": 2}},
        "max_text_len": 64, "prompt": "Describe los hallazgos.",
        "options": {"mask_channels": CHANNELS, "mask_embed_dim": 8, **options},
    }, "model")


def samples(n: int, seed: int = 0) -> list[DecodedSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        masks = rng.random((len(CHANNELS), 40, 40)) > 0.5
        out.append(DecodedSample(key=f"k{i}", shard="s0", images=[rng.integers(0, 256, (40, 40), dtype=np.uint8)],
                                 record={"study_id": f"s{i}", "report": {"text": REPORTS[i % 3]},
                                         "labels": {"cardiomegaly": 1.0}, "meta": {"age": 60 + i}},
                                 masks=masks, mask_channels=list(CHANNELS)))
    return out


@pytest.fixture(scope="module")
def fam_tok_model():
    fam = build_family(cfg())
    tok = fam.tokenizer(REPORTS * 3)
    torch.manual_seed(0)
    return fam, tok, fam.build_model(tok).eval()


def tensors(batch):
    return {k: v for k, v in batch.items() if torch.is_tensor(v)}


def test_exactly_mlp_conv_and_lora_train(fam_tok_model):
    fam, tok, model = fam_tok_model
    m = copy.deepcopy(model)
    lora = LoraConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    groups = apply_tuning(m, fam, TuningSpec("lora", lora))
    assert [g.name for g in groups] == ["mlp", "mask_conv", "lora"]
    names = {n for n, p in m.named_parameters() if p.requires_grad}
    assert all(n.startswith(("projector.", "mask_branch.conv.")) or "lora_" in n for n in names)
    assert {n for n in names if n.startswith("mask_branch")} == {"mask_branch.conv.weight", "mask_branch.conv.bias"}
    d_vis, d_emb, d_lm, k = 32, 8, 48, len(CHANNELS)
    mlp = (d_vis + d_emb) * d_lm + d_lm + d_lm * d_lm + d_lm  # two Linear layers (mlp, depth 2)
    conv = k * d_emb + d_emb
    head_dim, kv = d_lm // 4, 2
    per_layer = sum(4 * (i + o) for i, o in [(d_lm, d_lm), (d_lm, kv * head_dim), (d_lm, kv * head_dim), (d_lm, d_lm)])
    assert sum(p.numel() for p in m.parameters() if p.requires_grad) == mlp + conv + 2 * per_layer
    assert all(not p.requires_grad for p in m.vision.parameters())


def test_masks_reach_generation_and_the_ablations(fam_tok_model):
    fam, tok, model = fam_tok_model
    batch = fam.collate(tok)([fam.sample_builder(tok, "eval")(s) for s in samples(2)])
    assert batch["masks"].shape == (2, len(CHANNELS), 32, 32)
    with torch.no_grad():
        ref = model.image_features(batch["pixel_values"], batch["masks"])
        zeroed = fam.ablate(batch, "masks")
        assert float(zeroed["masks"].abs().sum()) == 0 and torch.equal(zeroed["pixel_values"], batch["pixel_values"])
        assert not torch.allclose(model.image_features(zeroed["pixel_values"], zeroed["masks"]), ref)
        black = fam.ablate(batch, "black")
        assert float(black["masks"].abs().sum()) == 0 and not torch.equal(black["pixel_values"], batch["pixel_values"])
    # what generation feeds the LM: the first forward call of ``lm.generate`` (the whole prompt)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def first_call(module, args, kwargs, output):
        if not seen:
            seen.append((kwargs["inputs_embeds"].detach().clone(), output.logits[:, -1].detach().clone()))

    def generation_inputs(b):
        seen.clear()
        handle = model.lm.register_forward_hook(first_call, with_kwargs=True)
        try:
            gens = fam.generate(model, tok, b, GenConfig(max_new_tokens=5))
        finally:
            handle.remove()
        return gens, seen[0]

    gens, (embeds, logits) = generation_inputs(batch)
    assert [g.id for g in gens] == ["s0", "s1"]
    _, (embeds0, logits0) = generation_inputs(zeroed)
    assert embeds.shape == embeds0.shape
    moved = (embeds - embeds0).abs().amax(-1) > 1e-6  # (rows, positions) the masks changed
    # exactly each row's image tokens, and they hold the image features computed with the masks
    assert moved.sum(1).tolist() == [ref.shape[1]] * 2, "zeroed masks left the generation inputs alone"
    torch.testing.assert_close(embeds[moved].reshape(ref.shape), ref)
    assert not torch.allclose(logits, logits0), "zeroed masks left the first-token logits alone"
    with pytest.raises(Exception, match="no ablation 'kg'"):
        fam.ablate(batch, "kg")


def test_eval_batch_ignores_report_labels_and_metadata(fam_tok_model):
    fam, tok, _ = fam_tok_model
    build = fam.sample_builder(tok, "eval")
    ss = samples(3)
    before = tensors(fam.collate(tok)([build(s) for s in ss]))
    edited = copy.deepcopy(ss)
    edited[1].record["report"]["text"] = "Neumotórax derecho importante. Cardiomegalia marcada."
    edited[1].record["labels"] = {"pneumothorax": 1.0}
    edited[1].record["meta"] = {"age": 1, "sex": "x"}
    after = tensors(fam.collate(tok)([build(s) for s in edited]))
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_export_round_trip_and_cnn_encoder_and_model_masks(fam_tok_model, tmp_path):
    fam, tok, model = fam_tok_model
    m = copy.deepcopy(model)
    apply_tuning(m, fam, TuningSpec("lora", LoraConfig(r=4)))
    with torch.no_grad():
        for n, p in m.named_parameters():
            if "lora_B" in n or "mask_branch" in n:
                p.normal_(0, 0.2)
    batch = tensors(fam.collate(tok)([fam.sample_builder(tok, "train")(s) for s in samples(2)]))
    ref = m.eval()(**batch).logits
    fam.save_pretrained(m, str(tmp_path / "export"), merge=True)
    back = load_pretrained(str(tmp_path / "export")).eval()
    torch.testing.assert_close(back(**batch).logits, ref, atol=1e-5, rtol=1e-5)

    # a CNN feature map (BioViL's encoder is a ResNet-50) and masks from a frozen TorchScript segmenter
    class TinyUNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.down = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1)
            self.up = torch.nn.ConvTranspose2d(8, len(CHANNELS), 2, stride=2)

        def forward(self, x):
            return self.up(torch.relu(self.down(x)))

    torch.jit.script(TinyUNet()).save(str(tmp_path / "seg.pt"))
    c = cfg(mask_source="model", segmenter=str(tmp_path / "seg.pt"), mask_channels=[], num_masks=len(CHANNELS))
    c.vision.hf_config = {"model_type": "resnet", "num_channels": 3, "embedding_size": 8, "hidden_sizes": [8, 16],
                          "depths": [1, 1], "layer_type": "basic"}
    cnn_fam = build_family(c)
    cnn = cnn_fam.build_model(tok).eval()
    assert cnn.vision.hidden_size == 16
    rows = [cnn_fam.sample_builder(tok, "train")(s) for s in samples(2)]
    assert "masks" not in rows[0]  # computed inside the model from the image
    out = cnn(**tensors(cnn_fam.collate(tok)(rows)))
    assert torch.isfinite(out.loss)
    groups = apply_tuning(cnn, cnn_fam, TuningSpec("projector"))
    assert not any(p.requires_grad for p in cnn.segmenter.parameters())
    assert [g.name for g in groups] == ["mlp", "mask_conv"]


def test_model_segmenter_directory_exports_as_safetensors_and_the_ablations_bypass_it(fam_tok_model, tmp_path):
    """``mask_source: model`` with a segmenter directory (shards/passes/masks/segmenter.py's layout): the masks are
    computed inside the model, both ablations replace them with zeros, and the export carries the
    segmenter as safetensors (no pickle, no TorchScript) and reloads to the same logits."""
    from safetensors.torch import load_file

    from shards.passes.masks.segmenter import UNet

    _, tok, _ = fam_tok_model
    outputs = ["left_lung", "right_lung", "heart", "mediastinum", "diaphragm", "trachea", "spine"]
    torch.manual_seed(1)
    unet = UNet(1, len(outputs), width=4, depth=2)
    with torch.no_grad():
        for p in unet.parameters():
            p.normal_(0, 0.5)
    unet.save_pretrained(str(tmp_path / "unet"), outputs, input_size=32)
    fam = build_family(cfg(mask_source="model", segmenter=str(tmp_path / "unet"), mask_channels=["heart", "spine"]))
    torch.manual_seed(0)
    model = fam.build_model(tok).eval()
    assert fam.num_masks == 2 and model.mask_branch.conv.in_channels == 2
    with torch.no_grad():
        for p in model.mask_branch.parameters():
            p.normal_(0, 0.5)
    batch = tensors(fam.collate(tok)([fam.sample_builder(tok, "eval")(s) for s in samples(2)]))
    assert "masks" not in batch
    with torch.no_grad():
        own = model.segmenter(batch["pixel_values"])
        assert own.shape == (2, 2, 32, 32) and float(own.std()) > 0
        ref = model.image_features(batch["pixel_values"])
        for kind in ("masks", "black"):
            ablated = fam.ablate(batch, kind)
            assert ablated["masks"].shape == (2, 2, 32, 32) and float(ablated["masks"].abs().sum()) == 0
            feats = model.image_features(ablated["pixel_values"], ablated["masks"])
            assert not torch.allclose(feats, ref), kind  # the zeroed masks, not the segmenter's, were used
        logits = model(**batch).logits
    fam.save_pretrained(model, str(tmp_path / "export"), merge=True)
    files = [p for p in (tmp_path / "export").rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".pt", ".pth", ".bin", ".pkl")], files
    seg = tmp_path / "export" / "segmenter" / "model.safetensors"
    assert seg.is_file() and set(load_file(str(seg))) == set(unet.state_dict())
    back = load_pretrained(str(tmp_path / "export")).eval()
    with torch.no_grad():
        torch.testing.assert_close(back(**batch).logits, logits, atol=1e-5, rtol=1e-5)
