"""Prompt formats, keyed by ``model.lm.chat_template``, and how a target joins its prompt.

A template turns the configured instruction into the prompt text that
precedes the report (it always holds exactly one image placeholder), and
says what ends the report target.  The sample builder appends the
tokenizer's end-of-sequence token after the report, so a template only needs
an explicit ``end`` when the chat format closes a turn with its own marker.

``checkpoint`` uses the chat template the LM's tokenizer ships (``tokenizer_config.json`` /
``chat_template.jinja``, e.g. MedGemma's Gemma turn markers), rendered once with placeholders.

:class:`PromptCodec` tokenises prompt + target as ONE sequence and masks the labels of the
prompt part: a SentencePiece tokenizer (Llama, Vicuna, Gemma) given the target on its own would
start it with a stray word-boundary token ("▁") that the model never sees after a real prompt.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from configs.schema import Registry

IMAGE_TOKEN = "<image>"

TEMPLATES: Registry["Template"] = Registry("chat template")


@dataclass(frozen=True)
class Template:
    name: str
    prompt_format: str  # holds {image} and {prompt}
    end: str = ""  # text after the report, before the tokenizer's eos (e.g. a chat turn closer)
    report_prefix: str = ""  # text glued before the report (e.g. a space after "ASSISTANT:")

    def prompt(self, prompt_text: str) -> str:
        """The full prompt (image placeholder included) that precedes the report."""
        return self.prompt_format.format(image=IMAGE_TOKEN, prompt=prompt_text)

    def wrap(self, content: str) -> str:
        """The user turn around ``content`` that already holds its image placeholder(s) (e.g. LLaVA-TA's
        topic prompt with two images): the template's own placeholder (and the newline after it) left out."""
        marker = "\x00RRGIMG\x00"
        text = self.prompt_format.format(image=marker, prompt=content)
        return text.replace(marker + "\n", "").replace(marker, "")

    def target(self, report: str) -> str:
        """The report as the model must produce it (eos excluded: the builder appends the token)."""
        return f"{self.report_prefix}{report.strip()}{self.end}"


def _add(t: Template) -> None:
    TEMPLATES.register(t.name)(t)


_add(Template("plain", "{image}\n{prompt}\n"))
_add(Template(
    "llama3",
    "<|start_header_id|>user<|end_header_id|>\n\n{image}\n{prompt}<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    end="<|eot_id|>",
))
# Vicuna v1.1 (FastChat's "vicuna_v1.1"; LLaVA's and LLaVA-Rad's conv_vicuna_v1, conv_mode "v1"): system prompt,
# "USER: ... ASSISTANT:", the answer after one space and closed by the eos "</s>"
VICUNA_SYSTEM = ("A chat between a curious user and an artificial intelligence assistant. "
                 "The assistant gives helpful, detailed, and polite answers to the user's questions.")
_add(Template("vicuna", VICUNA_SYSTEM + " USER: {image}\n{prompt} ASSISTANT:", report_prefix=" "))
_add(Template("vicuna_nosystem", "USER: {image}\n{prompt} ASSISTANT:", report_prefix=" "))
# R2GenGPT's prompt_wrap (models/R2GenGPT.py), which R2GenKG builds on: the image between <Img> </Img> text markers
_add(Template("r2gengpt", "Human: <Img>{image}</Img> {prompt} \nAssistant:", report_prefix=" "))
_add(Template("chatml", "<|im_start|>user\n{image}\n{prompt}<|im_end|>\n<|im_start|>assistant\n", end="<|im_end|>"))
_add(Template("gemma", "<start_of_turn>user\n{image}\n{prompt}<end_of_turn>\n<start_of_turn>model\n",
              end="<end_of_turn>"))


CHECKPOINT = "checkpoint"  # the LM tokenizer's own chat template


def get_template(name: str, key: str = "model.lm.chat_template", tok=None) -> Template:
    """A registered template, or (``checkpoint``) the one the tokenizer ``tok`` ships, rendered."""
    if name == CHECKPOINT:
        if tok is None:  # only the prompt's words are needed (e.g. texts a trained tokenizer must cover)
            return Template(CHECKPOINT, "{image}\n{prompt}")
        return checkpoint_template(tok, key)
    return TEMPLATES.get(name, key)


_SENT = ("\x00RRGIMG\x00", "\x00RRGPROMPT\x00", "\x00RRGREPORT\x00")


def checkpoint_template(tok, key: str = "model.lm.chat_template") -> Template:
    """The tokenizer's chat template as a :class:`Template`: one user turn (image + instruction), the
    generation prompt, and what follows the assistant's answer (its turn closer)."""
    from configs.schema import ConfigError

    if not getattr(tok, "chat_template", None):
        raise ConfigError(key, "'checkpoint' needs a tokenizer that ships a chat template (this one has none): "
                               f"use one of {sorted(TEMPLATES.names())}")
    img, prm, rep = _SENT
    user = [{"role": "user", "content": f"{img}\n{prm}"}]
    prompt = tok.apply_chat_template(user, tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(user + [{"role": "assistant", "content": rep}], tokenize=False)
    if img not in prompt or prm not in prompt or rep not in full:
        raise ConfigError(key, "the tokenizer's chat template drops the user turn's text")
    before, end = full.split(rep, 1)
    prefix = before[len(prompt):] if before.startswith(prompt) else ""
    fmt = prompt.replace("{", "{{").replace("}", "}}").replace(img, "{image}").replace(prm, "{prompt}")
    return Template(CHECKPOINT, fmt, end=end.rstrip(), report_prefix=prefix)  # the turn closer; eos follows


IGNORE_INDEX = -100


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class PromptCodec:
    """One family's prompt (``template`` around ``instruction``) and its targets, as token ids.

    ``ids``: bos (when the tokenizer has one and the template does not already start with it) + the
    templated prompt: what generation starts from.  :meth:`train_ids` tokenises prompt + target as one
    text and masks the labels of the leading tokens it shares with the prompt (all of them, unless the
    tokenizer merges across the boundary; then only the shared ones).
    """

    def __init__(self, tok, template: Template, instruction: str, max_len: int, key: str = "model.max_text_len",
                 text: Optional[str] = None):
        from configs.schema import ConfigError

        self.tok, self.template, self.max_len = tok, template, max_len
        self.text = template.prompt(instruction) if text is None else text  # ``text``: an already templated prompt
        raw = tok(self.text, add_special_tokens=False)["input_ids"]
        bos = tok.bos_token_id
        self.bos = [bos] if bos is not None and (not raw or raw[0] != bos) else []
        self.raw = raw
        self.ids = self.bos + raw
        if len(self.ids) >= max_len:
            raise ConfigError(key, f"{max_len} leaves no room for the target after the {len(self.ids)}-token prompt")

    def train_ids(self, target: str, max_len: Optional[int] = None) -> tuple[list[int], list[int]]:
        """(input_ids, labels) of prompt + target + eos, cut to ``max_len``; labels -100 on the prompt."""
        limit = self.max_len if max_len is None else max_len
        full = self.tok(self.text + self.template.target(target), add_special_tokens=False)["input_ids"]
        k = _common_prefix(full, self.raw)
        ids = self.bos + full
        k += len(self.bos)
        tail = (ids[k:] + [self.tok.eos_token_id])[: max(0, limit - k)]
        return ids[:k] + tail, [IGNORE_INDEX] * k + tail
