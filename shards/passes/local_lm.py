"""The one local language-model backend of the data passes (topics ``hf``, kg ``hf_causal``, reasoning ``hf_lm``).

A Hugging Face causal-LM directory on local disk, never downloaded, loaded once per task process and
shared by every pass there; greedy continuation of a prompt (what each pass then parses is its own).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from shards.passes import PassInputError

_LOADED: dict[str, "LocalLM"] = {}


class LocalLM:
    def __init__(self, path: str, key: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not Path(path).is_dir():
            raise PassInputError(f"{key} {path!r} is not a directory (a local causal-LM directory; nothing is downloaded)")
        try:
            self.tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
            self.model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
        except (OSError, ValueError) as err:
            raise PassInputError(f"{key} {path!r}: not a causal-LM directory transformers can read "
                                 f"({type(err).__name__}: {str(err).splitlines()[0][:300]})") from None
        tok = self.tok
        self.pad = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)

    @classmethod
    def get(cls, path: str, key: str) -> "LocalLM":
        """The model of ``path``, loaded on first use in this process; ``key`` names the config field in errors."""
        if path not in _LOADED:
            _LOADED[path] = cls(path, key)
        return _LOADED[path]

    def complete(self, prompt: str, max_new_tokens: int) -> str:
        """The greedy continuation of ``prompt`` (the prompt itself not included)."""
        import torch

        enc: Any = self.tok(prompt, return_tensors="pt")
        enc.pop("token_type_ids", None)
        with torch.no_grad():
            out = self.model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=self.pad)
        return self.tok.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)
