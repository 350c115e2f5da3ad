"""LVMed-R2 (arXiv 2504.02885): reason before reporting, reflect on and correct one's own perception.

The architecture is llava_rad's, the shared VLM of modeling/vlm.py (vision encoder -> projector -> causal
LM, ``<image>`` spliced in); what changes is the text the LM learns and emits:

* training rows learn one target field per stage (``report``, ``reasoning`` or ``reflection``) from
  the ``reasoning`` overlay of ``rrg annotate reasoning`` (shards/passes/reasoning/); the prompt names the
  target (reflection rows ask the model to check its perception), and the tokens of a reflection
  chain's corrupted span get label -100 (zero loss weight) unless ``include_corrupt_span``; a training
  study without an overlay entry is an error (``TargetError``: run ``rrg annotate reasoning``), one whose
  entry has no reflection variant (nothing to corrupt) keeps its reasoning row in the reflection stage;
  rows pack like llava_rad's (``train.packing``: the -100 span travels with its study's labels);
* each target has its own length budget (``max_len``): chains are several times longer than reports;
* ``generate`` prompts for a chain with reflection on or off (``eval.family_options.reflection``),
  keeps the whole chain as the trace and scores the extracted final report; a chain without a
  ``Final report:`` section falls back to its last paragraph, flagged for the evaluator to count;
  ``eval_variants`` scores reflection off and on in the same ``rrg eval`` (``reflection_off|on_*``).

Eval-mode rows read only the image and the reference text (kept aside): no annotation is read, so
editing a held-out report cannot change an eval batch.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from configs.schema import ConfigError
from modeling.config import ModelConfig
from modeling.family import FAMILIES, Generation, GenConfig, TargetError
from modeling.vlm import IGNORE, VLM, VLMFamily
from modeling.templates import get_template
from modeling.vision import image_stats, input_size, preprocess_image
from shards.passes.reasoning.annotate import SIDECAR as ANNOTATION  # the overlay `rrg annotate reasoning` writes
from shards.passes.reasoning.chain import (REFLECTION, REFLECTION_COMPACT, TARGETS, extract_final_report,
                                           perception_lines, target_text)
from shards.passes.reasoning.ontology import NORMAL


_DEFAULT_MAX_LEN = {"report": 160, "reasoning": 1024, "reflection": 1152}
REFLECTION_MODES = ("prompt", "inline")


@dataclass
class LvmedR2EvalOptions:
    """``eval.family_options`` of lvmed_r2: how the chain is generated, and which settings are scored."""

    chain: bool = True  # false: the report directly (no chain, no trace)
    reflection: bool = False  # the reflection prompt (the headline run's setting)
    reflections: Optional[list[bool]] = None  # settings scored side by side; default [false, true] with a chain

    def validate(self, key: str) -> None:
        if self.reflection and not self.chain:
            raise ConfigError(f"{key}.reflection", "reflection needs chain: true")
        if self.reflections and not self.chain:
            raise ConfigError(f"{key}.reflections", "scoring reflection variants needs chain: true")


@dataclass
class LvmedR2Options:
    """``model.options`` of lvmed_r2."""

    # prompt + target tokens per target field (image tokens come on top)
    max_len: dict[str, int] = field(default_factory=lambda: dict(_DEFAULT_MAX_LEN))
    include_corrupt_span: bool = False  # learn the corrupted perception line too (off: it has zero loss weight)
    reasoning_instruction: str = "Reason step by step, then write the report."
    reflection_instruction: str = "Reason step by step, check each perception and correct it, then write the report."
    max_new_tokens: int = 0  # generation budget for a chain; 0 = max_len of the generated target
    # how reflection is asked for.  "prompt": the reflection stage learns under its own instruction and
    # reflection on generates under it.  "inline": one instruction for every stage; the model reflects where
    # its chain calls for it, reflection on lets it, reflection off bans the reflection header while decoding
    # (same model, same prompt: the two settings differ exactly where a reflection fires).
    reflection_mode: str = "prompt"
    # loss weight of a training study whose findings describe nothing abnormal (every perception line normal,
    # no device; perception_lines of its own report): below 1 counters greedy decoding's pull to "normal"
    normal_weight: float = 1.0

    def validate(self, key: str = "model.options") -> None:
        if not 0.0 < self.normal_weight <= 1.0:
            raise ConfigError(f"{key}.normal_weight", f"{self.normal_weight}: must be in (0, 1]")
        if self.reflection_mode not in REFLECTION_MODES:
            raise ConfigError(f"{key}.reflection_mode", f"{self.reflection_mode!r}; known: {list(REFLECTION_MODES)}")
        for t, n in self.max_len.items():
            if t not in TARGETS:
                raise ConfigError(f"{key}.max_len.{t}", f"unknown target; known: {list(TARGETS)}")
            if n < 16:
                raise ConfigError(f"{key}.max_len.{t}", "must be >= 16")
        for t, n in _DEFAULT_MAX_LEN.items():  # overriding one target keeps the others' defaults
            self.max_len.setdefault(t, n)


def prompt_text(cfg: ModelConfig, opts: LvmedR2Options, target: str) -> str:
    """The templated prompt of a target: reports get the plain instruction, chains add theirs."""
    extra = {"report": "", "reasoning": opts.reasoning_instruction, "reflection": opts.reflection_instruction}[target]
    return get_template(cfg.lm.chat_template).prompt(f"{cfg.prompt} {extra}".strip())


def prompt_target(opts: LvmedR2Options, target: str) -> str:
    """The target whose prompt a ``target`` row is asked with: reflection rows use the reasoning prompt inline."""
    return "reasoning" if target == "reflection" and opts.reflection_mode == "inline" else target


def reflection_ban(tok) -> list[list[int]]:
    """The token sequences that open a reflection line as a chain writes one (``bad_words_ids`` of
    reflection off, inline): the word ``Reflection`` opening a line after a perception line, in both chain formats."""
    out: list[list[int]] = []
    for sentence in (REFLECTION, REFLECTION_COMPACT):
        text = f"- Heart (normal)\n{sentence.format(organ='heart')}"
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        start = text.index("Reflection:")
        end = start + len("Reflection:")
        seq = [i for i, (a, b) in zip(enc["input_ids"], enc["offset_mapping"]) if a < end and b > start]
        # up to the token that completes the word: banning "Reflection" itself, not only the colon after it
        seq = next((seq[:n] for n in range(1, len(seq) + 1) if "Reflection" in tok.decode(seq[:n])), seq)
        if seq and seq not in out:
            out.append(seq)
    return out


def prompt_ids(tok, cfg: ModelConfig, opts: LvmedR2Options, target: str) -> list[int]:
    ids = tok(prompt_text(cfg, opts, target), add_special_tokens=False)["input_ids"]
    ids = ([tok.bos_token_id] if tok.bos_token_id is not None else []) + ids
    if len(ids) >= opts.max_len[target]:
        raise ConfigError(f"model.options.max_len.{target}", f"{opts.max_len[target]} leaves no room after the "
                          f"{len(ids)}-token prompt")
    return ids


def target_tokens(tok, text: str, zero_spans: list[tuple[int, int]], chat_template: str) -> tuple[list[int], list[int]]:
    """(ids, labels) of a target text + eos; tokens overlapping a zero span get label -100.

    Character offsets come from the fast tokenizer's offset mapping over the templated target
    (template prefix accounted for), so a span recorded on the chain text maps to its tokens exactly.
    """
    tpl = get_template(chat_template)
    full = tpl.target(text)
    shift = full.find(text.strip()) if text.strip() else 0
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids, labels = list(enc["input_ids"]), list(enc["input_ids"])
    for j, (a, b) in enumerate(enc["offset_mapping"]):
        if any(a < s1 + shift and b > s0 + shift for s0, s1 in zero_spans):
            labels[j] = IGNORE
    return ids + [tok.eos_token_id], labels + [tok.eos_token_id]


def train_target(sample: Any, target: str) -> str:
    """The target a training study really learns: ``target``, except that a study whose overlay entry has
    no reflection variant (no described organ has another condition with a tree example to swap in: nothing
    to corrupt) keeps its reasoning row in the reflection stage.  A study without an overlay entry is an
    error (:class:`TargetError`), never a silent report row: that would turn the curriculum into direct SFT."""
    if target == "report":
        return target
    entry = sample.annotations.get(ANNOTATION)
    if not entry or not entry.get("reasoning"):
        raise TargetError(f"study {sample.key} (shard {sample.shard}) has no '{ANNOTATION}' annotation for "
                          f"target '{target}': run `rrg annotate reasoning CONFIG` on these shards first "
                          f"(or train on target 'report')")
    return "reasoning" if target == "reflection" and not entry.get("reflection") else target


def build_lvmed_sample(sample: Any, tok, cfg: ModelConfig, opts: LvmedR2Options, mode: str, target: str,
                       mean: list[float], std: list[float], prompts: dict[str, list[int]]) -> list[dict]:
    """DecodedSample -> one row.  Train: prompt + target (see :func:`train_target`).  Eval: the
    reasoning prompt only, the reference kept aside; no annotation is read."""
    row: dict[str, Any] = {
        "pixel_values": preprocess_image(sample.images[0], input_size(cfg.vision), cfg.vision.channels, mean, std),
        "key": sample.key, "study_id": sample.record.get("study_id", sample.key)}
    if mode == "eval":
        row["input_ids"] = torch.tensor(prompts["reasoning"], dtype=torch.long)
        row["reference"] = sample.report
        return [row]
    target = train_target(sample, target)
    text, spans = target_text(sample.report, sample.annotations.get(ANNOTATION), target, opts.include_corrupt_span)
    prompt = prompts[prompt_target(opts, target)]
    ids, labels = target_tokens(tok, text, spans, cfg.lm.chat_template)
    room = opts.max_len[target] - len(prompt)
    row["input_ids"] = torch.tensor(prompt + ids[:room], dtype=torch.long)
    row["labels"] = torch.tensor([IGNORE] * len(prompt) + labels[:room], dtype=torch.long)
    if opts.normal_weight != 1.0 and all(c == [NORMAL] for _, c, _ in perception_lines(sample.report)):
        row["sample_weight"] = opts.normal_weight
    return [row]


class LvmedR2(VLM):
    family_name = "lvmed_r2"


def chain_vocabulary() -> list[str]:
    """The fixed text of every chain (thinking sentences, headers, ontology knowledge, organ and condition
    names): the tokenizer learns it beside the training reports, so chains tokenize compactly."""
    from shards.passes.reasoning.chain import HEADERS, THINKING
    from shards.passes.reasoning.ontology import ONTOLOGY, conditions

    out = [*THINKING, *HEADERS, "Fine-grained report: no abnormality"]
    for organ, o in ONTOLOGY.items():
        out += [f"- {organ.capitalize()}: {o['knowledge']}", REFLECTION.format(organ=organ),
                REFLECTION_COMPACT.format(organ=organ), f"{organ}: {', '.join(o['conditions'])}",
                *(f"- {organ.capitalize()} ({c}):" for c in conditions(organ)),
                *(f"- {organ.capitalize()} ({c})" for c in conditions(organ))]
    return out


@FAMILIES.register("lvmed_r2")
class LvmedR2Family(VLMFamily):
    """llava_rad's architecture trained on reasoning chains, with reflection at inference."""

    name = "lvmed_r2"
    Options = LvmedR2Options
    EvalOptions = LvmedR2EvalOptions
    model_class = LvmedR2
    # trainer/evaluation/eval_hooks.py: reflection statistics in metrics.json, reflections in report.html
    extra_scores = ("reflection_stats",)
    report_rows = ("reflection_rows",)
    report_sections = ("reflection_section",)

    def __init__(self, cfg: ModelConfig):  # noqa: D107
        super().__init__(cfg)
        self.opts.validate()

    # ---- text -------------------------------------------------------------------------------
    def text_len(self, target: str = "report") -> int:
        return self.opts.max_len[target]

    def prompt_texts(self) -> list[str]:
        return [prompt_text(self.cfg, self.opts, t) for t in TARGETS]

    def tokenizer_texts(self, records: Iterable[dict], annotations: Iterable[dict] = ()) -> Iterable[str]:
        """Training reports, the chains' fixed vocabulary (x20, so its merges win) and any chains given."""
        yield from super().tokenizer_texts(records)
        for _ in range(20):
            yield from chain_vocabulary()
        for ann in annotations:
            for key in ("reasoning", "reflection"):
                if (ann or {}).get(key):
                    yield ann[key]

    # ---- samples ----------------------------------------------------------------------------
    def sample_builder(self, tok, mode: str, target: str = "report",
                       gen: Optional[GenConfig] = None) -> Callable[[Any], list[dict]]:
        if target not in TARGETS:
            raise ConfigError("train.stages.target", f"lvmed_r2 learns {list(TARGETS)}, not '{target}'")
        mean, std = image_stats(self.cfg.vision)
        prompts = {t: prompt_ids(tok, self.cfg, self.opts, t) for t in TARGETS}
        return partial(build_lvmed_sample, tok=tok, cfg=self.cfg, opts=self.opts, mode=mode, target=target,
                       mean=mean, std=std, prompts=prompts)

    # ---- generation -------------------------------------------------------------------------
    def _prompt_batch(self, tok, batch: dict, target: str) -> torch.Tensor:
        """The target's prompt for every row (prompts are the same for all studies: no padding)."""
        prompt = torch.tensor(prompt_ids(tok, self.cfg, self.opts, target), dtype=torch.long)
        return prompt.to(batch["pixel_values"].device)[None].expand(batch["pixel_values"].shape[0], -1).contiguous()

    def _options(self, gen: GenConfig) -> tuple[bool, bool, list[bool]]:
        """(chain, reflection, reflections) of ``eval.family_options``."""
        o = self.eval_options(gen)
        reflections = ([False, True] if o.chain else []) if o.reflections is None else o.reflections
        return o.chain, o.reflection, list(dict.fromkeys(reflections))

    def eval_variants(self, gen: GenConfig) -> dict[str, GenConfig]:
        """``reflection_off`` / ``reflection_on``: the chain generated with reflection off and on, scored in the
        same ``rrg eval`` (``eval.family_options.reflections``, default both; the headline's setting reuses its
        run), so one metrics.json holds reasoning vs reasoning + reflection."""
        _, head, wanted = self._options(gen)
        return {f"reflection_{'on' if r else 'off'}": gen if r == head else
                replace(gen, options={**gen.options, "reflection": r}) for r in wanted}

    def generate(self, model: nn.Module, tok, batch: dict, gen: GenConfig) -> list[Generation]:
        """A chain per study (reflection prompt when ``gen.options['reflection']``); the final report is scored.

        ``gen.options['chain'] = False`` asks for the report directly (no chain, no trace)."""
        chain, reflection, _ = self._options(gen)
        if not chain:
            ids = self._prompt_batch(tok, batch, "report")
            return super().generate(model, tok, {**batch, "input_ids": ids, "attention_mask": torch.ones_like(ids)}, gen)
        target = "reflection" if reflection else "reasoning"
        ids = self._prompt_batch(tok, batch, prompt_target(self.opts, target))
        budget = self.opts.max_new_tokens or (self.opts.max_len[target] - ids.shape[1])
        ban = {"bad_words_ids": reflection_ban(tok)} if self.opts.reflection_mode == "inline" and not reflection else {}
        out = model.generate(pixel_values=batch["pixel_values"], input_ids=ids, attention_mask=torch.ones_like(ids),
                             max_new_tokens=max(budget, gen.max_new_tokens), num_beams=gen.num_beams,
                             synced_gpus=gen.synced_gpus, **ban)
        chains = tok.batch_decode(out, skip_special_tokens=True)
        gens = []
        for i, w in enumerate(batch["sample_weight"].tolist()):
            if w > 0:
                text, fell_back = extract_final_report(chains[i].strip())
                gens.append(Generation(batch["study_ids"][i], batch["references"][i], text, trace=chains[i].strip(),
                                       extra={"final_report_fallback": fell_back, "reflection": reflection}))
        return gens
