"""Tokenizers: train a small byte-level BPE on the training reports, or load a local one.

Every rrg tokenizer has a pad token and the image placeholder ``<image>`` as a
single special token (the model splices image features in at its position).
Byte-level BPE round-trips any text exactly, so no report is ever mangled.
Nothing here downloads anything: paths are local directories.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from modeling.templates import IMAGE_TOKEN

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK, IMAGE_TOKEN]


def train_tokenizer(texts: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained on ``texts`` (reports plus prompt text), with rrg's special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    core = Tokenizer(models.BPE(unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size {vocab_size} is below the byte alphabet + specials "
                         f"({len(alphabet) + len(SPECIAL_TOKENS)})")
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=alphabet, show_progress=False)
    core.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=BOS, eos_token=EOS,
                                   unk_token=UNK, extra_special_tokens=[IMAGE_TOKEN])


def ensure_special_tokens(tok: PreTrainedTokenizerBase) -> PreTrainedTokenizerBase:
    """Add ``<image>`` (and a pad token, if missing) to a loaded tokenizer."""
    if tok.convert_tokens_to_ids(IMAGE_TOKEN) in (None, tok.unk_token_id) or \
            len(tok(IMAGE_TOKEN, add_special_tokens=False)["input_ids"]) != 1:
        tok.add_special_tokens({"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False)
    if tok.pad_token is None:
        if tok.eos_token is not None:
            tok.pad_token = tok.eos_token  # common for causal LMs; labels mask padding by attention_mask
        else:
            tok.add_special_tokens({"pad_token": PAD})
    return tok


def load_tokenizer(path: str) -> PreTrainedTokenizerBase:
    """Load a local tokenizer directory (never the Hub) and make sure it has rrg's special tokens."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no tokenizer directory {path}")
    return ensure_special_tokens(AutoTokenizer.from_pretrained(path, local_files_only=True))


def get_tokenizer(path: Optional[str], train_texts: Optional[Iterable[str]], vocab_size: int,
                  save_dir: Optional[str] = None) -> PreTrainedTokenizerBase:
    """The run's tokenizer: the copy already saved in ``save_dir`` (a run's own: read, never rewritten),
    else loaded from ``path`` or trained on ``train_texts``, then saved to ``save_dir`` when given.

    The driver saves the run's copy once, before any worker starts; workers, evaluation and export read it.
    """
    if save_dir is not None and os.path.isdir(save_dir) and os.listdir(save_dir) and train_texts is None:
        return load_tokenizer(save_dir)
    if path is not None:
        tok = load_tokenizer(path)
    elif train_texts is None:
        raise ValueError("no tokenizer path configured and no training reports given to train one")
    else:
        tok = train_tokenizer(train_texts, vocab_size)
    if save_dir is not None:
        tok.save_pretrained(save_dir)
    return tok


def image_token_id(tok: PreTrainedTokenizerBase) -> int:
    ids = tok(IMAGE_TOKEN, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        raise ValueError(f"tokenizer splits {IMAGE_TOKEN} into {ids}; it must be one special token")
    return ids[0]
