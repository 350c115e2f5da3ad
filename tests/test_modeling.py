"""Modeling: attention dispatch, the llava_rad family end to end, tokenizer, tuning, export."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import os

import numpy as np
import pytest
import torch
import yaml

from configs.schema import ConfigError, from_dict
from modeling.attention import attention, hf_attn_name, resolve_impl
from modeling.config import ModelConfig
from modeling.family import build_family, load_pretrained
from modeling.templates import IMAGE_TOKEN, get_template
from modeling.config import LoraConfig
from modeling.tuning import TuningSpec, apply_tuning, trainable_summary
from shards.records import DecodedSample

REPORTS = [
    "FINDINGS: No acute cardiopulmonary process. IMPRESSION: Normal chest.",
    "FINDINGS: Small left pleural effusion. IMPRESSION: Left effusion.",
    "FINDINGS: Enlarged cardiac silhouette with mild edema. IMPRESSION: Cardiomegaly.",
    "FINDINGS: Right lower lobe opacity. IMPRESSION: Possible pneumonia.",
]


def tiny_cfg(**over) -> ModelConfig:
    data = {
        "vision": {"image_size": 32, "hf_config": dict(
            model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=2, patch_size=8, image_size=32, num_channels=3)},
        "lm": {"tokenizer_vocab_size": 320, "hf_config": dict(
            model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True, initializer_range=0.1)},
        "max_text_len": 96,
    }
    data.update(over)
    return from_dict(ModelConfig, data, "model")


def make_samples(n: int, seed: int = 0) -> list[DecodedSample]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        shape = (48, 48) if i % 2 == 0 else (40, 40, 3)  # grayscale and RGB inputs
        out.append(DecodedSample(key=f"k{i}", shard="s0", images=[rng.integers(0, 256, shape, dtype=np.uint8)],
                                 record={"study_id": f"s{i}", "report": {"text": REPORTS[i % len(REPORTS)]}}))
    return out


def tune(model, mode: str, train_vision: bool = False):
    """``model`` with the base family's tuning ``mode`` applied (in place; returned for chaining)."""
    apply_tuning(model, build_family(tiny_cfg()), TuningSpec(mode, LoraConfig(), train_vision))
    return model


@pytest.fixture(scope="module")
def setup():
    fam = build_family(tiny_cfg())
    tok = fam.tokenizer(REPORTS)
    torch.manual_seed(0)
    model = fam.build_model(tok).eval()
    full = fam.collate(tok)([fam.sample_builder(tok, "train")(s) for s in make_samples(3)])
    assert "keys" in full and "study_ids" in full  # plain lists ride along for the trainer, never into forward
    batch = {k: v for k, v in full.items() if torch.is_tensor(v)}
    return fam, tok, model, batch


# ---- attention function ----------------------------------------------------------------------
def naive_attention(q, k, v, causal, mask):
    """Loop-free textbook reference: explicit head repeat, explicit bottom-right causal mask."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    lq, lk = q.shape[2], k.shape[2]
    if causal:
        allowed = torch.tensor([[j <= i + lk - lq for j in range(lk)] for i in range(lq)])
        s = s.masked_fill(~allowed, float("-inf"))
    if mask is not None:
        s = s.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else s + mask
    return torch.softmax(s, -1) @ v


@pytest.mark.parametrize("impl", ["sdpa", "eager", "auto"])
@pytest.mark.parametrize("case", ["causal", "causal_gqa", "padding_gqa", "additive", "decode_gqa"])
def test_attention_matches_reference(impl, case):
    g = torch.Generator().manual_seed(1)
    hq, hkv, lq, lk = (4, 2, 6, 6) if "gqa" in case else (4, 4, 6, 6)
    if case == "decode_gqa":
        lq = 2  # fewer queries than keys (cached decoding): causal aligned bottom-right
    q = torch.randn(2, hq, lq, 8, generator=g)
    k, v = torch.randn(2, hkv, lk, 8, generator=g), torch.randn(2, hkv, lk, 8, generator=g)
    mask, causal = None, case.startswith("causal") or case == "decode_gqa"
    if case == "padding_gqa":  # bidirectional with the last two keys of row 1 padded
        mask = torch.ones(2, 1, 1, lk, dtype=torch.bool)
        mask[1, ..., -2:] = False
    if case == "additive":
        mask = torch.randn(2, 1, lq, lk, generator=g)
    out = attention(q, k, v, causal=causal, attn_mask=mask, impl=impl)
    torch.testing.assert_close(out, naive_attention(q, k, v, causal, mask), atol=1e-5, rtol=1e-5)


def test_attention_impl_resolution():
    assert resolve_impl("eager", "cpu") == "eager"
    assert resolve_impl("auto", "cpu") == "sdpa"
    assert resolve_impl("flash", "cpu") == "sdpa"  # optional dependency: falls back
    with pytest.raises(ValueError):
        resolve_impl("xformers", "cpu")
    assert hf_attn_name("auto") == "rrg" and hf_attn_name("flash") == "rrg_fa"


@pytest.mark.gpu
def test_flash_matches_sdpa_on_gpu():
    if not torch.cuda.is_available() or importlib.util.find_spec("flash_attn") is None:
        reason = "needs CUDA and flash-attn (cuda=%s, flash_attn=%s)" % (
            torch.cuda.is_available(), importlib.util.find_spec("flash_attn") is not None)
        print(reason)
        pytest.skip(reason)
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 8, 128, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    k = torch.randn(2, 2, 128, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    v = torch.randn(2, 2, 128, 64, device="cuda", dtype=torch.bfloat16, generator=g)
    for causal in (True, False):
        torch.testing.assert_close(attention(q, k, v, causal=causal, impl="flash"),
                                   attention(q, k, v, causal=causal, impl="sdpa"), atol=2e-2, rtol=2e-2)


# ---- family, samples, forward/loss -------------------------------------------------------------
def test_builder_masks_prompt_and_pads(setup):
    fam, tok, model, batch = setup
    img = tok.convert_tokens_to_ids(IMAGE_TOKEN)
    assert batch["pixel_values"].shape == (3, 3, 32, 32)
    assert (batch["input_ids"] == img).sum(1).tolist() == [1, 1, 1]
    prompt_len = int((batch["labels"][0] != -100).nonzero()[0])  # bos + templated prompt
    assert prompt_len > int((batch["input_ids"][0] == img).nonzero()) + 1
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    assert (labels[:, :prompt_len] == -100).all()  # bos + prompt never counted
    valid = mask.bool()
    assert torch.equal(labels[valid & (labels != -100)], ids[valid & (labels != -100)])
    assert (labels[~valid] == -100).all() and (ids[~valid] == tok.pad_token_id).all()  # right padding
    first = tok.decode(ids[0][labels[0] != -100])
    assert first == REPORTS[0] + tok.eos_token
    cut = fam.sample_builder(tok, "train")(make_samples(1)[0])  # unchanged config, shorter budget below
    short = build_family(tiny_cfg(max_text_len=prompt_len + 3)).sample_builder(tok, "train")(make_samples(1)[0])
    assert len(short["input_ids"]) == prompt_len + 3 < len(cut["input_ids"])
    with pytest.raises(ConfigError, match="max_text_len"):  # a prompt that fills the budget is a config error
        build_family(tiny_cfg(max_text_len=prompt_len)).sample_builder(tok, "train")
    with pytest.raises(ConfigError):
        build_family(tiny_cfg(family="nope"))


def test_loss_counts_report_tokens_only(setup):
    fam, tok, model, batch = setup
    with pytest.raises(TypeError, match="skipped"):  # a misspelled or unknown batch key is an error
        model(**batch, skipped=3)
    out = model(**batch)
    assert torch.isfinite(out.loss)
    # equal to plain mean CE over the report positions of the spliced sequence
    shift = out.logits.shape[1] - batch["input_ids"].shape[1]
    lab = torch.full(out.logits.shape[:2], -100)
    lab[:, shift:] = batch["labels"]  # image block comes before all report tokens
    ref = torch.nn.functional.cross_entropy(out.logits[:, :-1].reshape(-1, out.logits.shape[-1]),
                                            lab[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, ref)
    with torch.no_grad():
        other = dict(batch, input_ids=batch["input_ids"].clone(), labels=batch["labels"].clone())
        pad = other["attention_mask"] == 0
        other["input_ids"][pad] = 7  # content under padding is invisible
        assert torch.allclose(model(**other).loss, out.loss, atol=1e-6)
        pos = int((other["labels"][0] != -100).nonzero()[0])
        other["labels"][0, pos] = (other["labels"][0, pos] + 1) % len(tok)  # a report target changes
        assert not torch.allclose(model(**other).loss, out.loss)


def test_sample_weight(setup):
    fam, tok, model, batch = setup
    with torch.no_grad():
        w = model(**dict(batch, sample_weight=torch.tensor([1.0, 0.0, 1.0]))).loss
        keep = [0, 2]
        sub = {k: batch[k][keep] for k in ("pixel_values", "input_ids", "attention_mask", "labels")}
        torch.testing.assert_close(w, model(**sub).loss, atol=1e-5, rtol=1e-5)
    m = tune(copy.deepcopy(model), "full", True).train()
    out = m(**dict(batch, sample_weight=torch.zeros(3)))
    assert out.loss.item() == 0.0 and out.loss.requires_grad
    out.loss.backward()
    grads = [p.grad for p in m.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and all(float(g.abs().max()) == 0.0 for g in grads)


def test_backward_and_image_features_matter(setup):
    fam, tok, model, batch = setup
    m = copy.deepcopy(model).train()
    m(**batch).loss.backward()
    assert m.projector[0].weight.grad.abs().sum() > 0 and m.vision.model.embeddings.patch_embedding.weight.grad.abs().sum() > 0
    with torch.no_grad():
        a = model(**batch).logits
        b = model(**dict(batch, pixel_values=torch.flip(batch["pixel_values"], dims=[-1]))).logits
    report = batch["labels"][0] != -100
    shift = a.shape[1] - batch["input_ids"].shape[1]
    assert (a[0, shift:][report] - b[0, shift:][report]).abs().max() > 1e-4


def test_sdpa_and_eager_agree_on_padded_batch(setup):
    fam, tok, model, batch = setup
    assert batch["attention_mask"].min() == 0  # the batch really is padded
    logits = {}
    for impl in ("sdpa", "eager"):
        f = build_family(tiny_cfg(attention=impl))
        m = f.build_model(tok).eval()
        m.load_state_dict(model.state_dict())
        assert m.lm.config._attn_implementation == f"rrg_{impl}"
        assert m.vision.model.config._attn_implementation == f"rrg_{impl}"
        with torch.no_grad():
            logits[impl] = m(**batch).logits
    shift = logits["sdpa"].shape[1] - batch["input_ids"].shape[1]
    valid = torch.cat([torch.ones(3, shift, dtype=torch.bool), batch["attention_mask"].bool()], 1)
    torch.testing.assert_close(logits["sdpa"][valid], logits["eager"][valid], atol=1e-5, rtol=1e-5)


def test_activation_checkpointing_same_loss(setup):
    fam, tok, model, batch = setup
    m = tune(copy.deepcopy(model), "lora").train()
    m.enable_activation_checkpointing()  # on top of LoRA: the frozen base LM must still pass gradients
    loss = m(**batch).loss
    loss.backward()
    torch.testing.assert_close(loss, model(**batch).loss, atol=1e-6, rtol=1e-6)
    base = m.lm.get_base_model()
    assert base.is_activation_checkpointing and m.vision.model.is_activation_checkpointing
    assert m.projector[0].weight.grad.abs().sum() > 0
    assert all(p.grad is not None for n, p in m.lm.named_parameters() if "lora_A" in n)


def test_demo_config_builds_and_runs():
    with open(os.path.join(os.path.dirname(__file__), "..", "configs", "demo.yaml")) as fh:
        cfg = from_dict(ModelConfig, yaml.safe_load(fh)["model"], "model")
    fam = build_family(cfg)
    tok = fam.tokenizer(REPORTS * 4)
    model = fam.build_model(tok)
    batch = fam.collate(tok)([fam.sample_builder(tok, "train")(s) for s in make_samples(2)])
    assert batch["pixel_values"].shape[-1] == 128
    assert torch.isfinite(model(**{k: v for k, v in batch.items() if torch.is_tensor(v)}).loss)


# ---- tokenizer / templates -----------------------------------------------------------------------
def test_tokenizer_round_trip_and_save(tmp_path, setup):
    fam, tok, _, _ = setup
    text = "FINDINGS: Unseen wörds, 3.5 cm nodule;\n  IMPRESSION: none."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert len(tok(IMAGE_TOKEN, add_special_tokens=False)["input_ids"]) == 1
    prompt = get_template("plain").prompt("Describe.")
    assert prompt == "<image>\nDescribe.\n"
    ids = tok(prompt, add_special_tokens=False)["input_ids"]
    assert ids.count(tok.convert_tokens_to_ids(IMAGE_TOKEN)) == 1
    fam.tokenizer(REPORTS, save_dir=str(tmp_path / "tok"))
    loaded = build_family(tiny_cfg(lm={**fam.cfg.lm.__dict__, "tokenizer": str(tmp_path / "tok")})).tokenizer()
    assert loaded(text)["input_ids"] == fam.tokenizer(REPORTS)(text)["input_ids"]
    assert loaded.pad_token_id is not None and len(loaded(IMAGE_TOKEN)["input_ids"]) == 1
    for name in ("llama3", "vicuna", "chatml", "gemma"):
        assert get_template(name).prompt("x").count(IMAGE_TOKEN) == 1


# ---- generation ---------------------------------------------------------------------------------
def test_generate_greedy_deterministic_and_stops_at_eos(setup):
    fam, tok, model, _ = setup
    m = copy.deepcopy(model).train()
    samples = make_samples(2)
    train = fam.collate(tok)([fam.sample_builder(tok, "train")(s) for s in samples])
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(60):  # memorise two reports
        opt.zero_grad()
        m(**{k: v for k, v in train.items() if torch.is_tensor(v)}).loss.backward()
        opt.step()
    m.eval()
    items = [fam.sample_builder(tok, "eval")(s) for s in samples]
    longer = dict(items[1], input_ids=torch.cat([items[1]["input_ids"][:1], torch.tensor([70, 71]),
                                                 items[1]["input_ids"][1:]]))
    batch = fam.collate(tok)([items[0], longer])  # row 0 left-padded by two
    assert batch["attention_mask"][0, :2].tolist() == [0, 0] and batch["references"][0] == REPORTS[0]
    args = (batch["pixel_values"], batch["input_ids"], batch["attention_mask"])
    g1, g2 = m.generate(*args, max_new_tokens=40), m.generate(*args, max_new_tokens=40)
    assert torch.equal(g1, g2) and g1.shape[1] <= 40
    row = g1[0].tolist()
    assert tok.eos_token_id in row  # stopped: eos then only padding
    end = row.index(tok.eos_token_id)
    assert all(t == tok.pad_token_id for t in row[end + 1:])
    assert tok.decode(row[:end]) == REPORTS[0]
    alone = fam.collate(tok)([items[0]])
    g_alone = m.generate(alone["pixel_values"], alone["input_ids"], alone["attention_mask"], max_new_tokens=40)
    assert g_alone[0].tolist()[: end + 1] == row[: end + 1]  # left padding does not change the answer
    short = m.generate(*args, max_new_tokens=3)
    assert short.shape == (2, 3)
    # the contract's default generate: one Generation per real study, fillers (weight 0) left out
    from modeling.family import GenConfig

    gens = fam.generate(m, tok, {**batch, "sample_weight": torch.tensor([1.0, 0.0])}, GenConfig(max_new_tokens=40))
    assert [(g.id, g.generated) for g in gens] == [("s0", REPORTS[0])]


# ---- tuning ----------------------------------------------------------------------------------
def _trainable(m) -> set[str]:
    return {n.split(".")[0] for n, p in m.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("mode,train_vision,expect", [
    ("projector", False, {"projector"}),
    ("lora", False, {"projector", "lm"}),
    ("full", False, {"projector", "lm"}),
    ("full", True, {"projector", "lm", "vision"}),
])
def test_apply_tuning(setup, mode, train_vision, expect):
    _, _, model, _ = setup
    m = tune(copy.deepcopy(model), mode, train_vision)
    assert m.rrg_tuning == mode and _trainable(m) == expect
    lm_trainable = [n for n, p in m.lm.named_parameters() if p.requires_grad]
    if mode == "lora":
        assert lm_trainable and all("lora_" in n for n in lm_trainable)
        assert any("q_proj" in n for n in lm_trainable) and not any("mlp" in n for n in lm_trainable)
    if mode == "full":
        assert len(lm_trainable) == len(list(m.lm.parameters()))
        vision_trainable = {n for n, p in m.vision.named_parameters() if p.requires_grad}
        assert not any(".head." in n or "post_layernorm" in n for n in vision_trainable)  # unused by features
        assert ("model.embeddings.patch_embedding.weight" in vision_trainable) == train_vision
    assert f"tuning={mode}" in trainable_summary(m)


# ---- export --------------------------------------------------------------------------------------
def _logits(m, batch):
    with torch.no_grad():
        return m.eval()(**batch).logits


def test_save_load_full(tmp_path, setup):
    from transformers import AutoModel, AutoModelForCausalLM

    _, _, model, batch = setup
    model.save_pretrained(str(tmp_path))
    torch.testing.assert_close(_logits(load_pretrained(str(tmp_path)), batch), _logits(model, batch), atol=0, rtol=0)
    assert "rrg" not in (tmp_path / "lm" / "config.json").read_text()  # no custom attention leaks out
    meta = json.loads((tmp_path / "rrg_model.json").read_text())
    assert meta["family"] == "llava_rad" and not meta["lm_adapter"]
    lm = AutoModelForCausalLM.from_pretrained(str(tmp_path / "lm"))
    vis = AutoModel.from_pretrained(str(tmp_path / "vision"))
    ids = batch["input_ids"][:, :5].masked_fill(batch["input_ids"][:, :5] == model.image_token_id, 3)
    with torch.no_grad():
        torch.testing.assert_close(lm(input_ids=ids).logits, model.lm(input_ids=ids).logits)
        torch.testing.assert_close(vis(pixel_values=batch["pixel_values"]).last_hidden_state,
                                   model.vision.model(pixel_values=batch["pixel_values"]).last_hidden_state)


@pytest.mark.parametrize("merge", [False, True])
def test_save_load_lora(tmp_path, setup, merge):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    _, _, model, batch = setup
    m = tune(copy.deepcopy(model), "lora")
    with torch.no_grad():  # LoRA B starts at zero: give the adapter a real effect
        for n, p in m.lm.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.2)
    ref = _logits(m, batch)
    assert not torch.allclose(ref, _logits(model, batch), atol=1e-4)
    m.save_pretrained(str(tmp_path), merge=merge)
    assert (tmp_path / "lm_adapter").is_dir() != merge
    torch.testing.assert_close(_logits(load_pretrained(str(tmp_path)), batch), ref, atol=1e-5, rtol=1e-5)
    ids = batch["input_ids"][:, -6:]
    with torch.no_grad():
        want = m.lm(input_ids=ids).logits
        lm = AutoModelForCausalLM.from_pretrained(str(tmp_path / "lm")).eval()
        if not merge:
            lm = PeftModel.from_pretrained(lm, str(tmp_path / "lm_adapter")).eval()
        torch.testing.assert_close(lm(input_ids=ids).logits, want, atol=1e-5, rtol=1e-5)


def test_vision_tower_from_dual_checkpoint(tmp_path):
    """A local SigLIP dual (image+text) checkpoint yields its vision tower with the same weights."""
    from transformers import AutoConfig, AutoModel

    from modeling.config import VisionConfig
    from modeling.vision import VisionEncoder, load_vision_model

    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    cfg = AutoConfig.for_model("siglip", vision_config=dict(small, patch_size=8, image_size=32),
                               text_config=dict(small, vocab_size=50, bos_token_id=1, eos_token_id=2, pad_token_id=0))
    torch.manual_seed(0)
    dual = AutoModel.from_config(cfg).eval()
    dual.save_pretrained(str(tmp_path))
    enc = VisionEncoder(load_vision_model(VisionConfig(path=str(tmp_path)), hf_attn_name("sdpa")).eval())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = dual.vision_model(pixel_values=x, output_hidden_states=True).hidden_states[-1]
        assert torch.equal(enc(x), want) and enc(x).shape == (2, enc.num_patches, 32)
