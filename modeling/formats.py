"""Reading what users download: local checkpoint directories in the formats they ship in.

Nothing here downloads anything, and no user file is unpickled: ``.bin`` / ``.pt`` weights are
read with ``torch.load(weights_only=True)`` (tensors and plain containers only), ``.safetensors``
with safetensors.  A directory rrg cannot read raises :class:`ModelFormatError`, one line naming
what was found there and the formats that are accepted; the driver checks every configured path
before any worker starts (:func:`check_model_paths`), so Ray never restarts a job for it.

Language models (:func:`load_causal_lm`):

* any Hugging Face causal LM directory (``config.json`` + ``model*.safetensors`` or
  ``pytorch_model*.bin`` shards, as Vicuna-7B-v1.5 and Llama-2 ship), loaded in the run's dtype;
* the text model inside a multimodal checkpoint (Gemma3 / MedGemma: ``Gemma3ForConditionalGeneration``,
  keys ``language_model.model.*``), extracted as its own causal LM (``config.get_text_config()``):
  only the language model's weights are read, and LoRA later wraps nothing else;
* a tokenizer that is only ``tokenizer.model`` (SentencePiece; needs ``sentencepiece`` and ``protobuf``).

Every weight the built model expects must be in the checkpoint: a missing key is an error, never a
silent random initialisation.
"""
from __future__ import annotations

import contextlib
import contextvars
import json
import os
import re
from pathlib import Path
from typing import Any, Optional

import torch


class ModelFormatError(ValueError):
    """A model directory rrg cannot read as configured: one line naming the path and what it found."""


LM_FORMATS = ("a Hugging Face causal LM directory (config.json + *.safetensors or pytorch_model*.bin)",
              "a multimodal checkpoint whose text model is a causal LM (Gemma3 / MedGemma)")

# keys of a multimodal checkpoint's language model -> the keys of the equivalent causal LM:
# the hub layout (Gemma3 as google/medgemma-4b-it ships it, and what transformers 5 writes) and the
# in-memory layout of transformers >= 4.52 (``model.language_model.*``)
TEXT_KEY_MAPPING = {r"^language_model\.model\.": "model.", r"^model\.language_model\.": "model.",
                    r"^language_model\.lm_head\.": "lm_head."}
# weights transformers recomputes or ties itself: never "missing"
_DERIVED = re.compile(r"(^|\.)(inv_freq|position_ids|num_batches_tracked)$")


def listing(path: str | os.PathLike, limit: int = 8) -> str:
    """A short, sorted listing of a directory for error messages."""
    p = Path(path)
    if not p.exists():
        return "nothing (no such path)"
    if p.is_file():
        return f"a file ({p.name})"
    names = sorted(x.name + ("/" if x.is_dir() else "") for x in p.iterdir())
    if not names:
        return "an empty directory"
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def read_json(path: str | os.PathLike) -> dict:
    try:
        with open(path) as fh:
            data = json.load(fh)
    except (OSError, ValueError) as err:
        raise ModelFormatError(f"{path}: not readable JSON ({err})") from None
    if not isinstance(data, dict):
        raise ModelFormatError(f"{path}: expected a JSON object")
    return data


def read_state_dict(path: str | os.PathLike, *, mmap: bool = False) -> dict[str, torch.Tensor]:
    """Tensors of one weights file: safetensors, or a torch file read with ``weights_only=True``.

    A training checkpoint (``{"state_dict": ..., "epoch": ...}``) gives its state dict, and the
    ``module.`` prefix DDP adds is removed (what open_clip's ``load_state_dict`` does).
    """
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        state = load_file(path)
    else:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except Exception as err:  # a pickle with code, a truncated file, not a torch file
            raise ModelFormatError(f"{path}: not a weights-only torch file ({type(err).__name__}: "
                                   f"{str(err).splitlines()[0][:160] if str(err) else ''})") from None
        state = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
        if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
            raise ModelFormatError(f"{path}: holds no state dict of tensors")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def precision_dtype(precision: Optional[str]) -> torch.dtype:
    return torch.bfloat16 if precision == "bf16" else torch.float32


# the dtype checkpoints are loaded in (the run's precision): set by the trainer around model building
_LOAD_DTYPE: contextvars.ContextVar[torch.dtype] = contextvars.ContextVar("rrg_load_dtype", default=torch.float32)


@contextlib.contextmanager
def loading_dtype(dtype: torch.dtype):
    """Checkpoints (and randomly initialised towers/LMs) built inside are in ``dtype``."""
    token = _LOAD_DTYPE.set(dtype)
    try:
        yield
    finally:
        _LOAD_DTYPE.reset(token)


def current_load_dtype() -> torch.dtype:
    return _LOAD_DTYPE.get()


# ``rrg plan``: build every model from its checkpoint's architecture, reading no weights (meta device)
_ARCHITECTURE_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("rrg_architecture_only", default=False)


@contextlib.contextmanager
def architecture_only():
    token = _ARCHITECTURE_ONLY.set(True)
    try:
        yield
    finally:
        _ARCHITECTURE_ONLY.reset(token)


def weights_wanted() -> bool:
    return not _ARCHITECTURE_ONLY.get()


# ---- language models ---------------------------------------------------------------------------
def lm_config(path: str):
    """(full config, text config) of a local LM directory; the text config is the LM rrg builds."""
    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ModelFormatError(f"model.lm.path {path}: found {listing(path)}; rrg reads {' or '.join(LM_FORMATS)}")
    try:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    except (ValueError, KeyError, OSError) as err:
        raise ModelFormatError(f"model.lm.path {path}: config.json is not a model transformers knows "
                               f"({str(err).splitlines()[0][:200]})") from None
    text = cfg.get_text_config()
    return cfg, text


def causal_lm_class(text_cfg, path: str):
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM._model_mapping[type(text_cfg)]
    except KeyError:
        raise ModelFormatError(f"model.lm.path {path}: model_type '{text_cfg.model_type}' has no causal LM class in "
                               f"transformers; rrg reads {' or '.join(LM_FORMATS)}") from None


def check_loading_info(info: dict, path: str, what: str) -> None:
    """A weight the model expects but the checkpoint lacks would be randomly initialised: refuse."""
    missing = [k for k in info.get("missing_keys", []) if not _DERIVED.search(k)]
    mismatched = list(info.get("mismatched_keys", []))
    if missing or mismatched:
        sample = (missing or [str(m[0]) if isinstance(m, tuple) else str(m) for m in mismatched])[:3]
        raise ModelFormatError(f"{what} {path}: the checkpoint lacks {len(missing)} weights and has "
                               f"{len(mismatched)} of the wrong shape for the model its config.json describes "
                               f"(e.g. {', '.join(sample)}): a partial or mismatched download?")


def build_causal_lm(lm_cfg, tok, attn: str):
    """The run's causal LM: from ``lm_cfg.path`` (see :func:`load_causal_lm`), or random from ``hf_config``.

    In the dtype of :func:`loading_dtype`.  When the tokenizer has more tokens than the embedding has rows
    (``<image>`` added to a real vocabulary), the rows grow to the next multiple of 64 (tensor-core friendly,
    as LLaVA does), new rows initialised from the old rows' mean.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    dtype = current_load_dtype()
    if lm_cfg.path is not None:
        if weights_wanted():
            lm = load_causal_lm(lm_cfg.path, attn=attn, dtype=dtype)
        else:
            _, text = lm_config(lm_cfg.path)
            lm = causal_lm_class(text, lm_cfg.path)._from_config(text, attn_implementation=attn, dtype=dtype)
        if len(tok) > lm.get_input_embeddings().num_embeddings:
            lm.resize_token_embeddings(len(tok), pad_to_multiple_of=64)
        return lm
    # an inline architecture may state its own (larger) vocabulary, as real-scale configs do
    hf = dict(lm_cfg.hf_config, vocab_size=max(len(tok), int(lm_cfg.hf_config.get("vocab_size", 0))),
              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(**hf), attn_implementation=attn, dtype=dtype)


def load_causal_lm(path: str, *, attn: str, dtype: torch.dtype):
    """The causal LM of a local directory (a multimodal checkpoint gives its text model), in ``dtype``."""
    cfg, text = lm_config(path)
    cls = causal_lm_class(text, path)
    # the text-model renames also read a Gemma3 text model saved in the multimodal layout (what transformers 5
    # writes for Gemma3ForCausalLM by default); they match no key of a plain causal LM
    kw: dict[str, Any] = dict(local_files_only=True, dtype=dtype, output_loading_info=True, key_mapping=TEXT_KEY_MAPPING)
    if text is not cfg:  # a multimodal checkpoint: its language model alone
        kw.update(config=text)
    with quiet_load_report(text is not cfg):  # the tower's weights are left over by design
        lm, info = _from_pretrained(cls, path, attn, kw)
    check_loading_info(info, path, "model.lm.path")
    return lm


class _DropLoadReport:
    def filter(self, record) -> bool:  # a logging.Filter
        return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def quiet_load_report(active: bool = True):
    """Drop transformers' load report while a part is read out of a larger checkpoint (a dual model's text
    tower, a classifier's head, a multimodal model's other half are left over by design); rrg checks the
    missing keys itself (:func:`check_loading_info`).  Other warnings still show."""
    if not active:
        yield
        return
    from transformers.utils import logging

    logger = logging.get_logger("transformers.modeling_utils")
    drop = _DropLoadReport()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def _from_pretrained(cls, path: str, attn: str, kw: dict):
    """``cls.from_pretrained`` with rrg's attention; a class without attention backends gets its own."""
    try:
        return cls.from_pretrained(path, attn_implementation=attn, **kw)
    except ValueError as err:
        if "attn_implementation" not in str(err) and "attention" not in str(err):
            raise
        return cls.from_pretrained(path, **kw)


def lm_dims(path: str) -> dict[str, Any]:
    """The text config of a local LM directory as a dict (``rrg plan`` builds it on the meta device)."""
    _, text = lm_config(path)
    return text.to_dict()
