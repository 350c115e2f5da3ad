"""Tiny random metric models in their real on-disk layouts, built with the libraries' own classes.

* :func:`make_roberta` -- a RobertaModel + byte-level BPE tokenizer (``save_pretrained``), standing in
  for distilroberta-base / roberta-large (BERTScore);
* :func:`make_green_lm` -- a LlamaForCausalLM + tokenizer with ``</s>`` as eos (GREEN-RadLlama2's layout);
* :func:`copy_radgraph` -- the radgraph_tiny fixture (built with the radgraph package's own classes);
* CheXbert: tests/chexbertkit.py.
"""
from __future__ import annotations

import shutil
from pathlib import Path

WORDS = ("no acute cardiopulmonary process mild cardiomegaly small left right pleural effusion pneumothorax edema "
         "the lungs are clear heart size is normal stable unchanged opacity atelectasis consolidation findings "
         "impression . , with without of").split()
DATA = Path(__file__).parent / "data" / "metrics"


def _bpe(special: list[str], extra: str = "", vocab_size: int = 400):
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([" ".join(WORDS)] * 4 + [extra], vocab_size=vocab_size, min_frequency=1,
                            special_tokens=special)
    return bpe


def make_roberta(out: Path, layers: int = 6, seed: int = 0) -> Path:
    import torch
    from transformers import RobertaConfig, RobertaModel, RobertaTokenizer

    out.mkdir(parents=True, exist_ok=True)
    bpe = _bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(out))
    # transformers 5: vocab=/merges= (the old vocab_file= keyword silently builds an empty vocabulary)
    tok = RobertaTokenizer(vocab=str(out / "vocab.json"), merges=str(out / "merges.txt"), model_max_length=64)
    tok.save_pretrained(str(out))
    torch.manual_seed(seed)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=layers, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=70, pad_token_id=tok.pad_token_id)
    RobertaModel(cfg).save_pretrained(str(out))
    return out


def make_green_lm(out: Path, seed: int = 0) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out.mkdir(parents=True, exist_ok=True)
    from trainer.evaluation.green import make_prompt

    bpe = _bpe(["<unk>", "<s>", "</s>", "<|user|>", "<|assistant|>"], extra=make_prompt("a", "b") * 4, vocab_size=900)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", model_max_length=4096)
    tok.save_pretrained(str(out))
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=4096,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(str(out))
    return out


def copy_radgraph(out: Path, model_type: str = "radgraph") -> tuple[Path, Path]:
    """(checkpoint dir, encoder dir) copied out of the fixture (the vocabulary dir must be writable, as in the package)."""
    shutil.copytree(DATA / "radgraph_tiny", out, dirs_exist_ok=True)
    return out / model_type, out / "encoder"
