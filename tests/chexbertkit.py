"""A tiny random CheXbert checkpoint in the published layout, for the CheXbert labeler's tests.

``{"model_state_dict": {"module.bert...", "module.linear_heads.N..."}}`` written with torch.save
(what the published checkpoint holds), a bert-base-uncased-style tokenizer directory with a
small WordPiece vocabulary, and the BERT config beside it.  Random weights, seeded.
"""
from __future__ import annotations

import json
from pathlib import Path

WORDS = ("no pleural effusion pneumothorax mild cardiomegaly heart size is normal the lungs are clear small left "
         "right focal consolidation edema stable unchanged possible atelectasis opacity pneumonia tube in place "
         "acute process cardiopulmonary . , of with without").split()
CONFIG = {"vocab_size": 0, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
          "intermediate_size": 64, "max_position_embeddings": 128, "type_vocab_size": 2, "model_type": "bert",
          "initializer_range": 0.5}  # large random weights: reports get different labels


def make_chexbert(root: Path, seed: int = 0) -> tuple[Path, Path, dict]:
    """(checkpoint file, tokenizer dir, the state dict written) under ``root``."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    tok_dir = root / "tokenizer"
    tok_dir.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(WORDS)) + [f"##{c}" for c in letters]
             + list(letters + "0123456789"))
    (tok_dir / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5: vocab= (the old vocab_file= keyword silently builds a 5-token vocabulary: every word [UNK])
    BertTokenizer(vocab=str(tok_dir / "vocab.txt"), do_lower_case=True).save_pretrained(str(tok_dir))
    config = dict(CONFIG, vocab_size=len(vocab))
    (tok_dir / "config.json").write_text(json.dumps(config))
    torch.manual_seed(seed)
    # built here as the published training code does (a BertModel and 14 heads inside nn.DataParallel,
    # hence the ``module.`` prefix), not with rrg's own class, so the test checks rrg against the layout
    bert = BertModel(BertConfig(**config))
    heads = [torch.nn.Linear(config["hidden_size"], 4) for _ in range(13)] + [torch.nn.Linear(config["hidden_size"], 2)]
    for head in heads:  # spread the logits so argmax differs across reports
        torch.nn.init.normal_(head.weight, std=2.0)
    sd = {f"module.bert.{k}": v.clone() for k, v in bert.state_dict().items()}
    for i, head in enumerate(heads):
        sd.update({f"module.linear_heads.{i}.{k}": v.clone() for k, v in head.state_dict().items()})
    ckpt = root / "chexbert.pth"
    torch.save({"model_state_dict": sd, "epoch": 8}, ckpt)
    return ckpt, tok_dir, sd
