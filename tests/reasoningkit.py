"""Helpers for the LVMed-R2 tests: a writable shard copy and in-place report edits (manifest re-published)."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path
from typing import Optional

from shards.manifest import file_sha256, load_manifest


def shard_copy(shards: str, dest: Path) -> str:
    out = Path(dest) / "shards"
    shutil.copytree(shards, out, ignore=shutil.ignore_patterns("sidecars", "assets"))
    return str(out)


def edit_reports(shards_dir: str, split: str, suffix: str) -> list[str]:
    """Add ``suffix`` to the findings of every report of ``split`` (tars and manifest rewritten); returns the keys."""
    manifest = load_manifest(shards_dir)
    keys = []
    for info in manifest.shards:
        if info.split != split:
            continue
        path = manifest.path_of(info)
        with tarfile.open(path, "r:") as tf:
            members = [(m, tf.extractfile(m).read()) for m in tf if m.isfile()]
        with tarfile.open(path, "w") as tf:
            for m, data in members:
                if m.name.endswith(".json"):
                    rec = json.loads(data)
                    text = rec["report"]["text"]
                    cut = text.find("\nIMPRESSION:")
                    rec["report"]["text"] = text + suffix if cut < 0 else text[:cut] + suffix + text[cut:]
                    keys.append(m.name.split(".")[0])
                    data = json.dumps(rec).encode()
                m.size = len(data)
                tf.addfile(m, io.BytesIO(data))
        info.sha256, info.num_bytes = file_sha256(path), path.stat().st_size
    manifest.write()
    return keys


def tiny_causal_lm(directory: Path, texts: list[str], forced: Optional[str] = None) -> str:
    """A random-initialised Llama-style LM + byte-level BPE tokenizer saved in the real HF layout.

    ``forced``: the directory's ``generation_config.json`` gets a ``sequence_bias`` that makes greedy
    decoding emit exactly ``forced`` then eos, whatever the prompt (constrained decoding, applied by
    transformers' own ``generate``): the key of step i is the forced tokens 0..i, its bias 100 * (i + 1),
    so the longest matching key wins over the random logits and over the always-on bias of token 0,
    provided token 0 does not recur (checked)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from modeling.tokenizer import train_tokenizer

    tok = train_tokenizer(texts + ([forced] * 8 if forced else []), 300)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, pad_token_id=tok.pad_token_id,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    model = LlamaForCausalLM(cfg)
    if forced:
        ids = tok(forced, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert ids.count(ids[0]) == 1, "the forced text's first token must not recur"
        model.generation_config.sequence_bias = [[ids[: i + 1], 100.0 * (i + 1)] for i in range(len(ids))]
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)
