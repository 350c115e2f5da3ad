"""Real checkpoint layouts (tests/ckptkit.py) read as they ship: encoders equal a reference forward on the
same weights, LMs load in the run's dtype with their SentencePiece tokenizers, a multimodal checkpoint gives
its text model (and LoRA wraps nothing else), and what rrg cannot read is one line naming what it found."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from configs.schema import ConfigError
from modeling.attention import hf_attn_name
from modeling.config import ModelConfig, VisionConfig
from modeling.vision import build_vision_encoder
from tests import ckptkit

@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    made = {}
    for name in ("vicuna", "llama2", "medgemma", "clip_dual", "rad_dino", "swin_classifier", "biomedclip",
                 "biomedclip_cxr_518", "biovil"):
        made[name] = getattr(ckptkit, name)(root / name)
    return made


def encoder(path, **kw):
    return build_vision_encoder(VisionConfig(path=str(path), **kw), hf_attn_name("sdpa")).eval()


def pixels(size: int, n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# ---- independent plain-torch references ---------------------------------------------------------------
def timm_vit_reference(sd: dict, x: torch.Tensor, heads: int, patch: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """timm ``VisionTransformer`` forward written out from its own state-dict keys: (block outputs with the
    embedding first, as LLaVA-Rad's VisionTower collects them; the final-norm output)."""
    def ln(t, p):
        return F.layer_norm(t, t.shape[-1:], sd[p + ".weight"], sd[p + ".bias"], eps=1e-6)

    h = F.conv2d(x, sd["patch_embed.proj.weight"], sd["patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    h = torch.cat([sd["cls_token"].expand(x.shape[0], -1, -1), h], 1)
    pos = sd["pos_embed"]
    if pos.shape[1] != h.shape[1]:  # open_clip's resize_pos_embed: bicubic, antialiased, class token kept
        g_old, g_new = int(math.isqrt(pos.shape[1] - 1)), int(math.isqrt(h.shape[1] - 1))
        grid = pos[:, 1:].reshape(1, g_old, g_old, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(g_new, g_new), mode="bicubic", antialias=True, align_corners=False)
        pos = torch.cat([pos[:, :1], grid.permute(0, 2, 3, 1).reshape(1, g_new * g_new, -1)], 1)
    h = h + pos
    states = [h]
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(n):
        b = f"blocks.{i}"
        y = ln(h, b + ".norm1")
        bsz, length, dim = y.shape
        qkv = F.linear(y, sd[b + ".attn.qkv.weight"], sd[b + ".attn.qkv.bias"])
        q, k, v = qkv.reshape(bsz, length, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(dim // heads), -1) @ v
        att = F.linear(att.transpose(1, 2).reshape(bsz, length, dim), sd[b + ".attn.proj.weight"], sd[b + ".attn.proj.bias"])
        h = h + (att * sd[b + ".ls1.gamma"] if b + ".ls1.gamma" in sd else att)
        m = F.linear(F.gelu(F.linear(ln(h, b + ".norm2"), sd[b + ".mlp.fc1.weight"], sd[b + ".mlp.fc1.bias"])),
                     sd[b + ".mlp.fc2.weight"], sd[b + ".mlp.fc2.bias"])
        h = h + (m * sd[b + ".ls2.gamma"] if b + ".ls2.gamma" in sd else m)
        states.append(h)
    return states, ln(h, "norm")


def resnet_reference(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet-50 (v1.5: stride on the 3x3) forward from its state-dict keys, BatchNorm in eval."""
    def bn(t, p):
        return F.batch_norm(t, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"], sd[p + ".bias"],
                            False, 0.0, 1e-5)

    h = F.max_pool2d(F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1")), 3, 2, 1)
    for s in range(1, 5):
        n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith(f"layer{s}."))
        for b in range(n):
            p = f"layer{s}.{b}"
            stride = 2 if (b == 0 and s > 1) else 1
            y = F.relu(bn(F.conv2d(h, sd[p + ".conv1.weight"]), p + ".bn1"))
            y = F.relu(bn(F.conv2d(y, sd[p + ".conv2.weight"], stride=stride, padding=1), p + ".bn2"))
            y = bn(F.conv2d(y, sd[p + ".conv3.weight"]), p + ".bn3")
            short = bn(F.conv2d(h, sd[p + ".downsample.0.weight"], stride=stride), p + ".downsample.1") \
                if p + ".downsample.0.weight" in sd else h
            h = F.relu(y + short)
    return h


def _trunk(path) -> dict:
    from modeling.formats import read_state_dict

    return {k[len("visual.trunk."):]: v.float() for k, v in read_state_dict(path).items() if k.startswith("visual.trunk.")}


# ---- encoders -------------------------------------------------------------------------------------
def test_biomedclip_open_clip_layout_equals_a_plain_timm_vit_forward(ckpts):
    """open_clip_config.json + open_clip_pytorch_model.bin (timm vit_base_patch16_224 trunk): LLaVA's second-to-last
    block and the final norm, patches only, to 1e-5; the normalisation is open_clip's preprocess_cfg."""
    from modeling.vision import image_stats

    sd = _trunk(ckpts["biomedclip"] / "open_clip_pytorch_model.bin")
    x = pixels(32)
    states, last = timm_vit_reference(sd, x, heads=12, patch=16)
    with torch.no_grad():
        enc = encoder(ckpts["biomedclip"], feature_layer=-2)
        assert enc.grid == (2, 2) and enc.prefix_tokens == 1 and enc.hidden_size == 24
        torch.testing.assert_close(enc(x), states[-2][:, 1:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(encoder(ckpts["biomedclip"], feature_layer="last")(x), last[:, 1:], atol=1e-5, rtol=1e-5)
        # another input size: the position embeddings are resized as open_clip does
        big = pixels(48)
        _, last48 = timm_vit_reference(sd, big, heads=12, patch=16)
        enc48 = encoder(ckpts["biomedclip"], feature_layer="last", image_size=48)
        assert enc48.grid == (3, 3)
        torch.testing.assert_close(enc48(big), last48[:, 1:], atol=1e-5, rtol=1e-5)
    assert image_stats(VisionConfig(path=str(ckpts["biomedclip"]))) == (ckptkit.OPENAI_MEAN, ckptkit.OPENAI_STD)


def test_biomedclip_cxr_518_training_checkpoint_is_a_dinov2_trunk_at_518(ckpts):
    """LLaVA-Rad's biomedclipcxr_518.json + biomedclipcxr_518_checkpoint.pt ({"state_dict": {"module.visual.trunk.*"}},
    a DINOv2 trunk with LayerScale): 37 x 37 patches + CLS at its native 518 px, hidden_states[-2] to 1e-5; it states
    no normalisation, so the run config must."""
    from modeling.vision import image_stats

    sd = _trunk(ckpts["biomedclip_cxr_518"] / "biomedclipcxr_518_checkpoint.pt")
    x = pixels(518, n=1)
    states, _ = timm_vit_reference(sd, x, heads=12, patch=14)
    with torch.no_grad():
        enc = encoder(ckpts["biomedclip_cxr_518"], feature_layer=-2)
        assert enc.image_size == 518 and enc.grid == (37, 37) and enc.num_patches == 1369
        torch.testing.assert_close(enc(x), states[-2][:, 1:], atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="states no image normalisation"):
        image_stats(VisionConfig(path=str(ckpts["biomedclip_cxr_518"])))
    with pytest.raises(ConfigError, match=r"model\.vision\.path.*vision\.mean"):
        checked(ModelConfig(vision=VisionConfig(path=str(ckpts["biomedclip_cxr_518"])), lm=_lm(ckpts)))


def checked(cfg) -> None:
    """What RunConfig.validate runs on its model section: the plain checks, then the checkpoints on disk."""
    from modeling.checks import check_checkpoints

    cfg.validate()
    check_checkpoints(cfg)


def _lm(ckpts):
    from modeling.config import LMConfig

    return LMConfig(path=str(ckpts["vicuna"]))


def test_biovil_hi_ml_state_dict_equals_a_plain_resnet50_forward(ckpts):
    """biovil_image_resnet50_proj_size_128.pt (hi-ml ImageModel: encoder.encoder.* + projector.*), beside CXR-BERT's
    config.json: the ResNet-50 trunk's last feature map, row-major tokens, to 1e-5; BatchNorm stays in eval mode
    when the tower is frozen, even when the model trains."""
    from modeling.formats import read_state_dict

    sd = {k[len("encoder.encoder."):]: v for k, v in
          read_state_dict(ckpts["biovil"] / "biovil_image_resnet50_proj_size_128.pt").items()
          if k.startswith("encoder.encoder.")}
    x = pixels(448, n=1)
    enc = encoder(ckpts["biovil"], image_size=448, mean=[0.0], std=[1.0])
    assert enc.grid == (14, 14) and enc.prefix_tokens == 0 and enc.hidden_size == 4 * 4 * 8
    for p in enc.parameters():
        p.requires_grad_(False)
    enc.train()
    assert not enc.model.training  # frozen: BatchNorm statistics never move
    with torch.no_grad():
        want = resnet_reference(sd, x).flatten(2).transpose(1, 2)
        torch.testing.assert_close(enc(x), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ConfigError, match=r"model\.vision\.path.*normalisation"):
        checked(ModelConfig(vision=VisionConfig(path=str(ckpts["biovil"]), image_size=448), lm=_lm(ckpts)))
    with pytest.raises(ConfigError, match=r"model\.vision\.path.*image_size"):
        checked(ModelConfig(vision=VisionConfig(path=str(ckpts["biovil"]), mean=[0.0], std=[1.0]), lm=_lm(ckpts)))


def test_hugging_face_towers_equal_their_own_classes(ckpts):
    """Dual CLIP (LLaVA's -2, CLS dropped), RAD-DINO at its native and another size (CLS never counted as a patch),
    a Swin classification checkpoint (its final normed state: 49 tokens at 224 px, not 56 x 56), and the SigLIP
    tower inside a MedGemma checkpoint; each against the Hugging Face class on the same weights."""
    from transformers import CLIPModel, Dinov2Model, Gemma3ForConditionalGeneration, SwinForImageClassification

    with torch.no_grad():
        x = pixels(28)
        ref = CLIPModel.from_pretrained(str(ckpts["clip_dual"])).vision_model(pixel_values=x, output_hidden_states=True)
        torch.testing.assert_close(encoder(ckpts["clip_dual"], feature_layer=-2)(x), ref.hidden_states[-2][:, 1:],
                                   atol=1e-5, rtol=1e-5)

        dino = Dinov2Model.from_pretrained(str(ckpts["rad_dino"])).eval()
        for size in (42, 56):
            enc = encoder(ckpts["rad_dino"], feature_layer="last", image_size=size)
            assert enc.grid == (size // 14, size // 14) and enc.prefix_tokens == 1
            x = pixels(size)
            torch.testing.assert_close(enc(x), dino(pixel_values=x).last_hidden_state[:, 1:], atol=1e-5, rtol=1e-5)

        swin = SwinForImageClassification.from_pretrained(str(ckpts["swin_classifier"])).swin.eval()
        enc = encoder(ckpts["swin_classifier"], feature_layer="last")
        assert enc.num_patches == 49 and enc.grid == (7, 7) and enc.hidden_size == 64
        x = pixels(224, n=1)
        torch.testing.assert_close(enc(x), swin(pixel_values=x).last_hidden_state, atol=1e-5, rtol=1e-5)

        gemma = Gemma3ForConditionalGeneration.from_pretrained(str(ckpts["medgemma"])).eval()
        enc = encoder(ckpts["medgemma"], feature_layer="last")
        x = pixels(56)
        torch.testing.assert_close(enc(x), gemma.model.vision_tower(pixel_values=x).last_hidden_state, atol=1e-5, rtol=1e-5)


def test_feature_parameters_are_exactly_those_the_features_use(ckpts):
    """The dry backward marks what train_vision may unfreeze: with -2 the last block and final norm get no gradient."""
    enc = encoder(ckpts["biomedclip"], feature_layer=-2)
    names = enc.used_parameter_names()
    all_names = {n for n, _ in enc.model.named_parameters()}
    assert not any(n.startswith("layers.1.") or n.startswith("layernorm.") for n in names)
    assert {n for n in all_names if n.startswith("layers.0.")} <= names
    x = pixels(32, n=1)
    enc.model.requires_grad_(True)
    enc(x).sum().backward()
    graded = {n for n, p in enc.model.named_parameters() if p.grad is not None}
    assert graded == set(names)


# ---- language models ---------------------------------------------------------------------------------
def test_vicuna_with_only_tokenizer_model_loads_and_pads_embeddings_to_64(ckpts):
    """Vicuna-7B-v1.5's layout (sharded pytorch_model-*.bin, tokenizer.model only, no tokenizer.json) in bf16: the
    <image> token is added, the embedding grows to a multiple of 64, the old rows and logits are unchanged."""
    from transformers import LlamaForCausalLM

    from modeling.config import LMConfig
    from modeling.formats import build_causal_lm, loading_dtype
    from modeling.tokenizer import image_token_id, load_tokenizer

    path = ckpts["vicuna"]
    assert not (path / "tokenizer.json").exists()
    tok = load_tokenizer(str(path))
    assert type(tok).__name__.startswith("Llama") and image_token_id(tok) == len(tok) - 1
    with loading_dtype(torch.bfloat16):
        lm = build_causal_lm(LMConfig(path=str(path)), tok, hf_attn_name("sdpa"))
    assert lm.dtype == torch.bfloat16 and lm.get_input_embeddings().num_embeddings % 64 == 0
    ref = LlamaForCausalLM.from_pretrained(str(path), dtype=torch.bfloat16)
    ids = torch.tensor([tok("The heart size is normal.").input_ids])
    with torch.no_grad():
        got, want = lm(input_ids=ids).logits, ref(input_ids=ids).logits
    assert torch.equal(got[..., : want.shape[-1]], want)


def test_gemma3_checkpoint_gives_its_text_model_and_lora_stays_inside_it(ckpts):
    """MedGemma (Gemma3ForConditionalGeneration): the LM is the text model (logits equal the VLM's on text), its
    size comes from get_text_config(), and LoRA on q/k/v/o wraps the LM's projections only (the SigLIP tower of the
    same checkpoint, serving as the encoder, is untouched)."""
    from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration

    from modeling.config import LMConfig, LoraConfig
    from modeling.formats import build_causal_lm
    from modeling.tokenizer import load_tokenizer
    from modeling.tuning import wrap_lora

    path = ckpts["medgemma"]
    tok = load_tokenizer(str(path))
    lm = build_causal_lm(LMConfig(path=str(path)), tok, hf_attn_name("sdpa"))
    assert isinstance(lm, Gemma3ForCausalLM) and lm.config.hidden_size == 64
    vlm = Gemma3ForConditionalGeneration.from_pretrained(str(path)).eval()
    ids = torch.tensor([tok("Normal heart.").input_ids])
    with torch.no_grad():
        torch.testing.assert_close(lm.eval()(input_ids=ids).logits, vlm(input_ids=ids).logits, atol=1e-5, rtol=1e-5)
    enc = encoder(path, feature_layer="last")
    model = torch.nn.ModuleDict({"vision": enc, "lm": lm})
    model["lm"] = wrap_lora(model["lm"], LoraConfig(r=4, alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]))
    wrapped = sorted(n.rsplit(".lora_A", 1)[0] for n, _ in model.named_modules() if n.endswith("lora_A"))
    assert len(wrapped) == 2 * 4 and all(n.startswith("lm.base_model.model.model.layers.") for n in wrapped), wrapped
    assert not any("lora" in n for n, _ in model["vision"].named_parameters())


def test_prompt_and_target_are_one_sequence_in_the_checkpoints_chat_template(ckpts):
    """Vicuna v1.1 carries its system prompt; 'checkpoint' renders MedGemma's own turn markers; the target's tokens are
    those of the joint text (no stray word-boundary token), its labels masked on the prompt only."""
    from modeling.templates import VICUNA_SYSTEM, PromptCodec, get_template
    from modeling.tokenizer import load_tokenizer

    vtok = load_tokenizer(str(ckpts["vicuna"]))
    vic = PromptCodec(vtok, get_template("vicuna"), "Write the findings.", 256)
    assert vic.text.startswith(VICUNA_SYSTEM + " USER: <image>\n") and vic.text.endswith(" ASSISTANT:")
    gtok = load_tokenizer(str(ckpts["medgemma"]))
    tpl = get_template("checkpoint", tok=gtok)
    assert tpl.prompt("Describe.") == "<bos><start_of_turn>user\n<image>\nDescribe.<end_of_turn>\n<start_of_turn>model\n"
    assert tpl.end == "<end_of_turn>"
    for tok, codec in ((vtok, vic), (gtok, PromptCodec(gtok, tpl, "Describe.", 256))):
        ids, labels = codec.train_ids("Normal heart.")
        joint = tok(codec.text + codec.template.target("Normal heart."), add_special_tokens=False)["input_ids"]
        k = len(codec.ids)
        assert ids[:k] == codec.ids and labels[:k] == [-100] * k and ids.count(tok.bos_token_id) == 1
        assert ids[k:] == labels[k:] == joint[len(codec.raw):] + [tok.eos_token_id]
    word = gtok.convert_ids_to_tokens(PromptCodec(gtok, tpl, "Describe.", 256).train_ids("Normal heart.")[0])
    assert word[len(PromptCodec(gtok, tpl, "Describe.", 256).ids)] != "▁"


# ---- what rrg does not read ------------------------------------------------------------------------
def test_unreadable_directories_are_one_line_before_anything_starts(ckpts, tmp_path):
    odd = tmp_path / "weird"
    odd.mkdir()
    (odd / "weights.npz").write_bytes(b"\0" * 10)
    (odd / "notes.txt").write_text("x")
    with pytest.raises(ConfigError) as err:
        checked(ModelConfig(vision=VisionConfig(path=str(odd)), lm=_lm(ckpts)))
    msg = str(err.value)
    assert "model.vision.path" in msg and "notes.txt, weights.npz" in msg and "open_clip" in msg and "\n" not in msg
    pickled = tmp_path / "code"
    pickled.mkdir()
    import pickle

    (pickled / "model.pt").write_bytes(pickle.dumps({"x": print}))  # a pickle that names code: never unpickled
    with pytest.raises(ConfigError, match="not a weights-only torch file"):
        checked(ModelConfig(vision=VisionConfig(path=str(pickled)), lm=_lm(ckpts)))
    from modeling.config import LMConfig

    with pytest.raises(ConfigError, match=r"model\.lm\.path.*found notes\.txt"):
        checked(ModelConfig(vision=VisionConfig(path=str(ckpts["clip_dual"])), lm=LMConfig(path=str(odd))))


def test_a_checkpoint_missing_weights_is_refused_not_randomly_initialised(ckpts, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from modeling.config import LMConfig
    from modeling.formats import ModelFormatError, build_causal_lm
    from modeling.tokenizer import load_tokenizer

    bad = tmp_path / "llama2_partial"
    shutil.copytree(ckpts["llama2"], bad)
    shard = sorted(bad.glob("model-*.safetensors"))[-1]
    state = load_file(str(shard))
    dropped = sorted(state)[0]
    del state[dropped]
    save_file(state, str(shard), metadata={"format": "pt"})
    with pytest.raises(ModelFormatError, match="lacks 1 weights"):
        build_causal_lm(LMConfig(path=str(bad)), load_tokenizer(str(bad)), hf_attn_name("sdpa"))


def test_plan_reads_real_dimensions_and_token_counts_from_checkpoint_paths(ckpts):
    """`rrg plan` on a real-scale config whose paths exist here: the tiny checkpoints' own sizes (not the inline
    hf_config's 7B), read without their weights, and the image tokens of the tower's dry forward (1,369 at 518 px)."""
    import contextlib
    import io

    from trainer.config import load_config
    from trainer.plan import plan_stages, run_plan
    from tests.trainkit import ROOT

    cfg = load_config(str(ROOT / "configs" / "llava_rad_7b.yaml"),
                      [f"model.vision.path={ckpts['biomedclip_cxr_518']}", f"model.lm.path={ckpts['vicuna']}"])
    align, lora = plan_stages(cfg)[0]
    rows = {name: total for name, total, _ in align.rows}
    assert rows["vision"] < 1e6 and rows["lm"] < 1e6  # the checkpoints' sizes, not Vicuna-7B's
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        plan = run_plan(cfg, gpus=1, studies=100)
    assert "1 x 1369 image tokens" in out.getvalue(), out.getvalue()[:400]
    assert plan["seq_len"] == 512 + 1369
