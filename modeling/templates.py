"""Prompt formats, keyed by ``model.lm.chat_template``.

A template turns the configured instruction into the prompt text that
precedes the report (it always holds exactly one image placeholder), and
says what ends the report target.  The sample builder appends the
tokenizer's end-of-sequence token after the report, so a template only needs
an explicit ``end`` when the chat format closes a turn with its own marker.
"""
from __future__ import annotations

from dataclasses import dataclass

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
_add(Template("vicuna", "USER: {image}\n{prompt} ASSISTANT:", report_prefix=" "))
_add(Template("chatml", "<|im_start|>user\n{image}\n{prompt}<|im_end|>\n<|im_start|>assistant\n", end="<|im_end|>"))
_add(Template("gemma", "<start_of_turn>user\n{image}\n{prompt}<end_of_turn>\n<start_of_turn>model\n",
              end="<end_of_turn>"))


def get_template(name: str, key: str = "model.lm.chat_template") -> Template:
    return TEMPLATES.get(name, key)
