"""Tiny random checkpoints in the exact on-disk layouts the seed papers' components ship in.

Hugging Face formats are written with the libraries' own classes and ``save_pretrained``; the others
with the file names and state-dict key names their projects write (cited per function).  Sizes are
tiny (widths 24-64, 1-2 layers) so that tests build and train them in seconds; the structure (file
set, key names, fused q/k/v, LayerScale, BatchNorm buffers, sharded ``.bin`` weights, a
SentencePiece-only tokenizer) is the real one.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import torch

OPENAI_MEAN = [0.48145466, 0.4578275, 0.40821073]  # CLIP's / open_clip's default normalisation
OPENAI_STD = [0.26862954, 0.26130258, 0.27577711]
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
TEXTS = ["The heart size is normal. No pleural effusion or pneumothorax.",
         "Mild cardiomegaly with small bilateral pleural effusions and bibasilar atelectasis.",
         "Lungs are clear. There is no focal consolidation. Findings: impression: stable.",
         "A chat between a curious user and an artificial intelligence assistant. USER: ASSISTANT:",
         "Write the findings and impression of this chest X-ray. Describe los hallazgos de esta radiografia."]


def _json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))


def sentencepiece_model(vocab_size: int = 320, *, gemma: bool = False, user_symbols: tuple[str, ...] = ()) -> bytes:
    """A BPE SentencePiece model with byte fallback, trained as Llama's (unk 0, bos 1, eos 2, no pad) or
    Gemma's (pad 0, eos 1, bos 2, unk 3) ids are laid out."""
    import sentencepiece as spm

    ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>") \
        if gemma else dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1)
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(TEXTS * 40), model_writer=out, vocab_size=vocab_size,
                                   model_type="bpe", byte_fallback=True, add_dummy_prefix=True, split_digits=True,
                                   normalization_rule_name="identity", remove_extra_whitespaces=False,
                                   character_coverage=1.0, user_defined_symbols=list(user_symbols), minloglevel=2,
                                   **ids)
    return out.getvalue()


def _llama(vocab: int, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(kw.pop("seed", 0))
    # a large init scale: the random LM then writes varied text (at the usual 0.02 it repeats one token, which
    # would make "the same text from two paths" hold trivially)
    cfg = LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4, vocab_size=vocab, max_position_embeddings=4096, bos_token_id=1,
                      eos_token_id=2, pad_token_id=None, tie_word_embeddings=False, rms_norm_eps=1e-5,
                      initializer_range=0.3, **kw)
    return LlamaForCausalLM(cfg)


def vicuna(d: Path) -> Path:
    """lmsys/vicuna-7b-v1.5 as it ships: config.json, generation_config.json, ``pytorch_model-0000{1,2}-of-00002
    .bin`` + ``pytorch_model.bin.index.json`` (torch pickles of plain state dicts), ``tokenizer.model``
    (SentencePiece), ``tokenizer_config.json`` (LlamaTokenizer, legacy false), ``special_tokens_map.json`` and NO
    ``tokenizer.json``."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "tokenizer.model").write_bytes(sentencepiece_model())
    import sentencepiece as spm

    vocab = spm.SentencePieceProcessor(model_proto=(d / "tokenizer.model").read_bytes()).get_piece_size()
    model = _llama(vocab)
    model.config.save_pretrained(d)
    model.generation_config.save_pretrained(d)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    keys = sorted(state)
    halves = [keys[: len(keys) // 2], keys[len(keys) // 2:]]
    weight_map = {}
    for i, part in enumerate(halves, start=1):
        name = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({k: state[k] for k in part}, d / name)
        weight_map.update({k: name for k in part})
    _json(d / "pytorch_model.bin.index.json", {"metadata": {"total_size": sum(v.numel() * v.element_size()
                                                                             for v in state.values())},
                                               "weight_map": weight_map})
    _json(d / "tokenizer_config.json", {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>",
                                        "clean_up_tokenization_spaces": False, "eos_token": "</s>", "legacy": False,
                                        "model_max_length": 4096, "pad_token": None, "padding_side": "right",
                                        "sp_model_kwargs": {}, "tokenizer_class": "LlamaTokenizer",
                                        "unk_token": "<unk>"})
    _json(d / "special_tokens_map.json", {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<unk>",
                                          "unk_token": "<unk>"})
    return d


def llama2(d: Path) -> Path:
    """meta-llama/Llama-2-7b-hf: ``model-0000{1,2}-of-00002.safetensors`` + index (``save_pretrained`` sharded),
    ``tokenizer.model`` and the ``tokenizer.json`` transformers writes beside it."""
    from transformers import AutoTokenizer

    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".sp"
    tmp.mkdir()
    (tmp / "tokenizer.model").write_bytes(sentencepiece_model())
    _json(tmp / "tokenizer_config.json", {"tokenizer_class": "LlamaTokenizer", "bos_token": "<s>",
                                          "eos_token": "</s>", "unk_token": "<unk>", "legacy": False})
    tok = AutoTokenizer.from_pretrained(str(tmp))
    tok.save_pretrained(d)
    (d / "tokenizer.model").write_bytes((tmp / "tokenizer.model").read_bytes())
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    model = _llama(len(tok), seed=1)
    size = sum(p.numel() * 4 for p in model.parameters())
    model.save_pretrained(d, max_shard_size=f"{size // 2 // 1000 + 1}KB")
    return d


GEMMA_CHAT_TEMPLATE = (  # Gemma 3's turn format (tokenizer_config.json "chat_template"), system turns left out
    "{{ bos_token }}{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}{%- set role = 'model' -%}{%- else -%}{%- set role = message['role'] -%}"
    "{%- endif -%}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}"
    "{%- endfor -%}{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}")
GEMMA_SPECIALS = ("<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>")


def medgemma(d: Path, image_size: int = 56, tied: bool = True) -> Path:
    """google/medgemma-4b-it: a ``Gemma3ForConditionalGeneration`` (SigLIP tower + Gemma3 text model) written by
    ``save_pretrained`` (keys ``language_model.model.*``, ``vision_tower.vision_model.*``,
    ``multi_modal_projector.*``, as the hub files), its Gemma tokenizer with the turn markers and the chat template,
    and the Gemma3 image processor's ``preprocessor_config.json`` (mean/std 0.5).

    ``tied=False`` unties the output layer (the real checkpoint ties it: no ``lm_head`` key): a random tied Gemma
    echoes the prompt's last token, so the end-to-end test, which needs varied text, unties it."""
    from transformers import AutoTokenizer, Gemma3Config, Gemma3ForConditionalGeneration

    d.mkdir(parents=True, exist_ok=True)
    tmp = d / ".sp"
    tmp.mkdir()
    (tmp / "tokenizer.model").write_bytes(sentencepiece_model(360, gemma=True, user_symbols=GEMMA_SPECIALS))
    _json(tmp / "tokenizer_config.json", {"tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>",
                                          "eos_token": "<eos>", "pad_token": "<pad>", "unk_token": "<unk>",
                                          "add_bos_token": True, "add_eos_token": False})
    tok = AutoTokenizer.from_pretrained(str(tmp))
    tok.chat_template = GEMMA_CHAT_TEMPLATE
    tok.save_pretrained(d)
    for f in tmp.iterdir():
        f.unlink()
    tmp.rmdir()
    image_id = tok.convert_tokens_to_ids("<image_soft_token>")
    torch.manual_seed(2)
    cfg = Gemma3Config(
        text_config=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=1, head_dim=32, vocab_size=len(tok) + 24, sliding_window=64,
                         layer_types=["sliding_attention", "full_attention"], max_position_embeddings=4096,
                         initializer_range=0.3, tie_word_embeddings=tied),  # varied text from a random LM
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=image_size, patch_size=14, vision_use_head=False),
        mm_tokens_per_image=4, image_token_index=image_id,
        boi_token_index=tok.convert_tokens_to_ids("<start_of_image>"),
        eoi_token_index=tok.convert_tokens_to_ids("<end_of_image>"), bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, tie_word_embeddings=tied)
    Gemma3ForConditionalGeneration(cfg).save_pretrained(d)
    _json(d / "preprocessor_config.json", {"do_normalize": True, "do_resize": True, "image_mean": [0.5, 0.5, 0.5],
                                           "image_processor_type": "Gemma3ImageProcessor", "image_seq_length": 4,
                                           "image_std": [0.5, 0.5, 0.5], "resample": 2, "rescale_factor": 1 / 255,
                                           "size": {"height": image_size, "width": image_size}})
    return d


def clip_dual(d: Path, image_size: int = 28, patch: int = 14) -> Path:
    """openai/clip-vit-large-patch14-336: the dual-tower ``CLIPModel`` + ``CLIPImageProcessor``'s config."""
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(3)
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg = CLIPConfig(text_config=dict(small, vocab_size=99, bos_token_id=0, eos_token_id=2, pad_token_id=1), vision_config=dict(small, image_size=image_size,
                                                                                 patch_size=patch), projection_dim=16)
    CLIPModel(cfg).save_pretrained(d)
    _json(d / "preprocessor_config.json", {"crop_size": {"height": image_size, "width": image_size},
                                           "do_center_crop": True, "do_normalize": True, "do_resize": True,
                                           "image_mean": OPENAI_MEAN, "image_processor_type": "CLIPImageProcessor",
                                           "image_std": OPENAI_STD, "resample": 3,
                                           "size": {"shortest_edge": image_size}})
    return d


def rad_dino(d: Path, image_size: int = 42) -> Path:
    """microsoft/rad-dino: a ``Dinov2Model`` (CLS + patches) + its ``BitImageProcessor`` config (crop 518 in the
    real one)."""
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(4)
    Dinov2Model(Dinov2Config(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                             image_size=image_size, patch_size=14)).save_pretrained(d)
    _json(d / "preprocessor_config.json", {"crop_size": {"height": image_size, "width": image_size},
                                           "do_center_crop": True, "do_normalize": True,
                                           "image_mean": [0.5307, 0.5307, 0.5307],
                                           "image_processor_type": "BitImageProcessor",
                                           "image_std": [0.2583, 0.2583, 0.2583], "size": {"shortest_edge": image_size}})
    return d


def swin_classifier(d: Path) -> Path:
    """microsoft/swin-base-patch4-window7-224: a ``SwinForImageClassification`` checkpoint (keys ``swin.*`` +
    ``classifier.*``) at 224 px, patch 4, window 7, four stages: the last one is 7 x 7 = 49 tokens."""
    from transformers import SwinConfig, SwinForImageClassification

    torch.manual_seed(5)
    SwinForImageClassification(SwinConfig(embed_dim=8, depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4], window_size=7,
                                          image_size=224, patch_size=4, num_labels=5)).save_pretrained(d)
    _json(d / "preprocessor_config.json", {"do_normalize": True, "do_resize": True, "image_mean": IMAGENET_MEAN,
                                           "image_processor_type": "ViTImageProcessor", "image_std": IMAGENET_STD,
                                           "size": {"height": 224, "width": 224}})
    return d


def _timm_vit(width: int, layers: int, patch: int, grid: int, layerscale: bool, seed: int) -> dict[str, torch.Tensor]:
    """A timm ``VisionTransformer`` state dict (its key names; fused qkv with bias; LayerScale for DINOv2)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, s=0.2):
        return torch.randn(*shape, generator=g) * s

    out = {"cls_token": r(1, 1, width), "pos_embed": r(1, 1 + grid * grid, width),
           "patch_embed.proj.weight": r(width, 3, patch, patch, s=0.05), "patch_embed.proj.bias": r(width),
           "norm.weight": 1 + r(width, s=0.1), "norm.bias": r(width, s=0.1)}
    for i in range(layers):
        b = f"blocks.{i}."
        out.update({b + "norm1.weight": 1 + r(width, s=0.1), b + "norm1.bias": r(width, s=0.1),
                    b + "attn.qkv.weight": r(3 * width, width), b + "attn.qkv.bias": r(3 * width),
                    b + "attn.proj.weight": r(width, width), b + "attn.proj.bias": r(width),
                    b + "norm2.weight": 1 + r(width, s=0.1), b + "norm2.bias": r(width, s=0.1),
                    b + "mlp.fc1.weight": r(4 * width, width), b + "mlp.fc1.bias": r(4 * width),
                    b + "mlp.fc2.weight": r(width, 4 * width), b + "mlp.fc2.bias": r(width)})
        if layerscale:
            out.update({b + "ls1.gamma": 0.5 + r(width, s=0.1), b + "ls2.gamma": 0.5 + r(width, s=0.1)})
    return out


def _open_clip_state(trunk: dict[str, torch.Tensor], width: int) -> dict[str, torch.Tensor]:
    """open_clip's CustomTextCLIP keys: ``visual.trunk.*`` (timm), ``visual.head.proj`` (timm_proj linear, no
    bias), a PubMedBERT text tower (``text.transformer.*``, ``text.proj.*``) and ``logit_scale``."""
    g = torch.Generator().manual_seed(7)
    state = {f"visual.trunk.{k}": v for k, v in trunk.items()}
    state["visual.head.proj.weight"] = torch.randn(16, width, generator=g)
    state["text.transformer.embeddings.word_embeddings.weight"] = torch.randn(50, 16, generator=g)
    state["text.transformer.embeddings.position_ids"] = torch.arange(8)[None]
    state["text.proj.0.weight"] = torch.randn(16, 16, generator=g)
    state["logit_scale"] = torch.tensor(4.6052)
    return state


def biomedclip(d: Path, width: int = 24, layers: int = 2, patch: int = 16, image_size: int = 32) -> Path:
    """microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224: ``open_clip_config.json`` (``model_cfg`` with a timm
    ``vit_base_patch16_224`` trunk + ``preprocess_cfg``) and ``open_clip_pytorch_model.bin`` (a plain state dict)."""
    d.mkdir(parents=True, exist_ok=True)
    trunk = _timm_vit(width, layers, patch, image_size // patch, layerscale=False, seed=11)
    torch.save(_open_clip_state(trunk, width), d / "open_clip_pytorch_model.bin")
    _json(d / "open_clip_config.json", {
        "model_cfg": {"embed_dim": 16, "vision_cfg": {"timm_model_name": "vit_base_patch16_224",
                                                      "timm_model_pretrained": False, "timm_pool": "",
                                                      "timm_proj": "linear", "image_size": image_size},
                      "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                                   "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                                   "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler",
                                   "context_length": 256}},
        "preprocess_cfg": {"mean": OPENAI_MEAN, "std": OPENAI_STD}})
    return d


def biomedclip_cxr_518(d: Path, width: int = 24, layers: int = 2, image_size: int = 518) -> Path:
    """LLaVA-Rad's BiomedCLIP-CXR (microsoft/llava-rad): ``biomedclipcxr_518.json`` (an open_clip model config,
    no ``preprocess_cfg``; a ``vit_base_patch14_dinov2`` trunk at 518 px) and ``biomedclipcxr_518_checkpoint.pt``
    (an open_clip training checkpoint: ``epoch``, ``name``, ``state_dict`` with DDP's ``module.`` prefix)."""
    d.mkdir(parents=True, exist_ok=True)
    trunk = _timm_vit(width, layers, 14, image_size // 14, layerscale=True, seed=13)
    state = {f"module.{k}": v for k, v in _open_clip_state(trunk, width).items()}
    torch.save({"epoch": 32, "name": "biomedclip_cxr_518", "state_dict": state}, d / "biomedclipcxr_518_checkpoint.pt")
    _json(d / "biomedclipcxr_518.json", {
        "embed_dim": 16, "vision_cfg": {"timm_model_name": "vit_base_patch14_dinov2", "timm_model_pretrained": False,
                                        "timm_pool": "", "timm_proj": "linear", "image_size": image_size},
        "text_cfg": {"hf_model_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_tokenizer_name": "microsoft/BiomedNLP-BiomedBERT-base-uncased-abstract",
                     "hf_proj_type": "mlp", "hf_pooler_type": "cls_last_hidden_state_pooler", "context_length": 256}})
    return d


def _torchvision_resnet(base: int, depths=(3, 4, 6, 3), seed: int = 17) -> dict[str, torch.Tensor]:
    """A torchvision ``resnet50``-layout state dict (Bottleneck blocks, expansion 4) at width ``base``."""
    g = torch.Generator().manual_seed(seed)

    def bn(prefix: str, c: int) -> dict:
        return {f"{prefix}.weight": 1 + 0.1 * torch.randn(c, generator=g), f"{prefix}.bias": 0.1 * torch.randn(c, generator=g),
                f"{prefix}.running_mean": 0.1 * torch.randn(c, generator=g),
                f"{prefix}.running_var": 0.5 + torch.rand(c, generator=g), f"{prefix}.num_batches_tracked": torch.tensor(7)}

    def conv(o, i, k):
        return torch.randn(o, i, k, k, generator=g) * (2 / (i * k * k)) ** 0.5

    out = {"conv1.weight": conv(base, 3, 7), **bn("bn1", base)}
    inp = base
    for s, n in enumerate(depths, start=1):
        width = base * 2 ** (s - 1)
        for b in range(n):
            p = f"layer{s}.{b}"
            out.update({f"{p}.conv1.weight": conv(width, inp, 1), **bn(f"{p}.bn1", width),
                        f"{p}.conv2.weight": conv(width, width, 3), **bn(f"{p}.bn2", width),
                        f"{p}.conv3.weight": conv(4 * width, width, 1), **bn(f"{p}.bn3", 4 * width)})
            if b == 0:
                out.update({f"{p}.downsample.0.weight": conv(4 * width, inp, 1), **bn(f"{p}.downsample.1", 4 * width)})
            inp = 4 * width
    out.update({"fc.weight": torch.randn(10, inp, generator=g), "fc.bias": torch.zeros(10)})
    return out


def biovil(d: Path, base: int = 4) -> Path:
    """microsoft/BiomedVLP-CXR-BERT-specialized's image model: ``biovil_image_resnet50_proj_size_128.pt``, the state
    dict of hi-ml-multimodal's ``ImageModel`` (``encoder.encoder.*``: torchvision ResNet-50 keys; ``projector.model.*``:
    1x1 conv, BatchNorm, ReLU, 1x1 conv to 128), beside the repository's CXR-BERT ``config.json``."""
    d.mkdir(parents=True, exist_ok=True)
    resnet = _torchvision_resnet(base)
    feat = resnet["layer4.0.conv3.weight"].shape[0]
    g = torch.Generator().manual_seed(19)
    state = {f"encoder.encoder.{k}": v for k, v in resnet.items()}
    state.update({"projector.model.0.weight": torch.randn(128, feat, 1, 1, generator=g),
                  "projector.model.1.weight": torch.ones(128), "projector.model.1.bias": torch.zeros(128),
                  "projector.model.1.running_mean": torch.zeros(128), "projector.model.1.running_var": torch.ones(128),
                  "projector.model.1.num_batches_tracked": torch.tensor(0),
                  "projector.model.3.weight": torch.randn(128, 128, 1, 1, generator=g),
                  "projector.model.3.bias": torch.zeros(128)})
    torch.save(state, d / "biovil_image_resnet50_proj_size_128.pt")
    _json(d / "config.json", {"architectures": ["CXRBertModel"], "model_type": "cxr-bert", "hidden_size": 768,
                              "auto_map": {"AutoConfig": "configuration_cxrbert.CXRBertConfig",
                                           "AutoModel": "modeling_cxrbert.CXRBertModel"}, "vocab_size": 30522})
    return d
