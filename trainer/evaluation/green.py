"""GREEN (Ostmeier et al. 2024): an LLM counts clinically significant errors and matched findings.

Re-implemented from Stanford-AIMI/GREEN ``green_score/green.py`` and ``utils.py`` (Apache-2.0), for a
local GREEN-RadLlama2 directory (``eval.green.model_dir``; ``save_pretrained`` layout of
``StanfordAIMI/GREEN-radllama2-7b``, a plain Llama causal LM, loaded with ``trust_remote_code=False``):

* prompt: :func:`make_prompt` (each report cut to its first 300 words), wrapped in GREEN's chat template
  (``<|user|>`` / ``<|assistant|>`` turns closed by the eos token), the tokenizer with
  ``add_eos_token=True``, left padding, ``pad = eos``, truncation to 2048 tokens;
* generation: greedy, ``max_length=2048`` (prompt included), decoded with special tokens skipped,
  then :func:`clean_responses`;
* parsing (:func:`parse_counts`, GREEN's ``parse_error_counts``): the text after
  ``[Clinically Significant Errors]:`` up to a blank line; lines ``(a) ...: N.`` .. ``(f)``
  (or ``(1)`` .. ``(6)``) give the six counts; ``[Matched Findings]:`` starting with ``N.`` gives the
  matches; a section that starts with "No" counts 0;
* ``green = matched / (matched + sum(significant errors))``, 0 when nothing matched (GREEN's ``compute_green``).
"""
from __future__ import annotations

import os
import re
from typing import Optional, Sequence

CATEGORIES = ("Clinically Significant Errors", "Clinically Insignificant Errors", "Matched Findings")
SUB_CATEGORIES = ("(a) False report of a finding in the candidate", "(b) Missing a finding present in the reference",
                  "(c) Misidentification of a finding's anatomic location/position",
                  "(d) Misassessment of the severity of a finding",
                  "(e) Mentioning a comparison that isn't in the reference",
                  "(f) Omitting a comparison detailing a change from a prior study")
CHAT_TEMPLATE = (
    "{% for message in messages %}\n{% if message['from'] == 'human' %}\n{{ '<|user|>\n' + message['value'] + "
    "eos_token }}\n{% elif message['from'] == 'system' %}\n{{ '<|system|>\n' + message['value'] + eos_token }}\n"
    "{% elif message['from'] == 'gpt' %}\n{{ '<|assistant|>\n'  + message['value'] + eos_token }}\n{% endif %}\n"
    "{% if loop.last and add_generation_prompt %}\n{{ '<|assistant|>' }}\n{% endif %}\n{% endfor %}")

_PROMPT = """Objective: Evaluate the accuracy of a candidate radiology report in comparison to a reference radiology report composed by expert radiologists.

    Process Overview: You will be presented with:

    1. The criteria for making a judgment.
    2. The reference radiology report.
    3. The candidate radiology report.
    4. The desired format for your assessment.

    1. Criteria for Judgment:

    For each candidate report, determine:

    The count of clinically significant errors.
    The count of clinically insignificant errors.

    Errors can fall into one of these categories:

    a) False report of a finding in the candidate.
    b) Missing a finding present in the reference.
    c) Misidentification of a finding's anatomic location/position.
    d) Misassessment of the severity of a finding.
    e) Mentioning a comparison that isn't in the reference.
    f) Omitting a comparison detailing a change from a prior study.
    Note: Concentrate on the clinical findings rather than the report's writing style. Evaluate only the findings that appear in both reports.

    2. Reference Report:
    {reference}

    3. Candidate Report:
    {candidate}

    4. Reporting Your Assessment:

    Follow this specific format for your output, even if no errors are found:
    ```
    [Explanation]:
    <Explanation>

    [Clinically Significant Errors]:
    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>
    ....
    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>

    [Clinically Insignificant Errors]:
    (a) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>
    ....
    (f) <Error Type>: <The number of errors>. <Error 1>; <Error 2>; ...; <Error n>

    [Matched Findings]:
    <The number of matched findings>. <Finding 1>; <Finding 2>; ...; <Finding n>
    ```
"""


def make_prompt(reference: str, candidate: str, max_len: int = 300) -> str:
    return _PROMPT.format(reference=" ".join(reference.split()[:max_len]),
                          candidate=" ".join(candidate.split()[:max_len]))


def clean_responses(response: str) -> str:
    """GREEN's ``clean_responses``, quirks included (its ``or`` test reduces to the first string)."""
    if "[Explanation]:" in response:
        if "<|assistant|>" in response:
            response = response.split("<|assistant|>")[-1]
        if "[Explanation]:\n    <Explanation>\n" in response:
            response = response.split("[Explanation]:")[1]
        else:
            response = response.split("[Explanation]:")[-1]
    if "<|assistant|>" in response:
        response = response.split("<|assistant|>")[-1]
    return response.replace("</s>", "").replace("<unk>", "")


def parse_counts(text: str, category: str) -> tuple[int, list[int]]:
    """(total, six sub-counts) of one category, as GREEN's ``parse_error_counts`` reads them."""
    if category not in CATEGORIES:
        raise ValueError(f"category must be one of {CATEGORIES}")
    found = re.search(rf"\[{re.escape(category)}\]:\s*(.*?)(?:\n\s*\n|\Z)", text, re.DOTALL)
    subs = [0] * 6
    if not found or found.group(1).startswith("No"):
        return 0, subs
    body = found.group(1)
    if category == "Matched Findings":
        counts = re.findall(r"^\b\d+\b(?=\.)", body)
        return (int(counts[0]) if counts else 0), subs
    prefixes = [s.split(" ", 1)[0] + " " for s in SUB_CATEGORIES]
    matches = sorted(re.findall(r"\([a-f]\) .*", body))
    if not matches:
        matches = sorted(re.findall(r"\([1-6]\) .*", body))
        prefixes = [f"({i}) " for i in range(1, 7)]
    for pos, prefix in enumerate(prefixes):
        for m in matches:
            if m.startswith(prefix):
                count = re.findall(r"(?<=: )\b\d+\b(?=\.)", m)
                if count:
                    subs[pos] = int(count[0])
    return sum(subs), subs


def green_score(response: str) -> float:
    _, sig = parse_counts(response, CATEGORIES[0])
    matched, _ = parse_counts(response, CATEGORIES[2])
    return 0.0 if matched == 0 else matched / (matched + sum(sig))


class Green:
    """GREEN from a local directory: ``green(hyps, refs) -> (scores, responses)``."""

    def __init__(self, model_dir: str, batch_size: int = 8, max_length: int = 2048, device: Optional[str] = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from trainer.evaluation.text_metrics import MetricModelError

        if not model_dir or not os.path.isdir(model_dir):
            raise MetricModelError(f"eval.green.model_dir={model_dir!r}: not a directory (no download is attempted)")
        dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
        self.model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype,
                                                          trust_remote_code=False).to(dev).eval()
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, add_eos_token=True, padding_side="left")
        tok.chat_template = CHAT_TEMPLATE
        tok.pad_token = tok.eos_token
        tok.clean_up_tokenization_spaces = True
        self.tokenizer, self.device, self.batch_size, self.max_length = tok, dev, batch_size, max_length
        self._torch = torch

    def responses(self, hyps: Sequence[str], refs: Sequence[str]) -> list[str]:
        torch = self._torch
        tok = self.tokenizer
        prompts = [make_prompt(r, h) for r, h in zip(refs, hyps)]
        out = []
        for lo in range(0, len(prompts), self.batch_size):
            chats = [tok.apply_chat_template([{"from": "human", "value": p}, {"from": "gpt", "value": ""}],
                                             tokenize=False, add_generation_prompt=True)
                     for p in prompts[lo:lo + self.batch_size]]
            enc = tok(chats, return_tensors="pt", padding=True, truncation=True, max_length=self.max_length).to(self.device)
            with torch.no_grad():
                gen = self.model.generate(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                                          eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                                          max_length=self.max_length, do_sample=False)
            out += [clean_responses(t) for t in tok.batch_decode(gen, skip_special_tokens=True)]
        return out

    def __call__(self, hyps: Sequence[str], refs: Sequence[str]) -> tuple[list[float], list[str]]:
        res = self.responses(hyps, refs)
        return [green_score(r) for r in res], res
