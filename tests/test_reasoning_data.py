"""LVMed-R2 data: ontology, perception tree (train split only), chains, reflection span, final-report extraction."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs.parallel import SerialPool
from shards.manifest import load_manifest
from shards.reader import make_loader
from shards.config import DataConfig
from shards.passes.reasoning.config import ReasoningConfig
from shards.passes.reasoning.annotate import annotate_reasoning, build_perception_tree
from shards.passes.reasoning.chain import (HEADERS, build_tree, extract_final_report, feasible_directions, parse_chain,
                                           perception_lines, plan_reflections, sentence_counts, target_text,
                                           template_chain)
from shards.passes.reasoning.ontology import classify_sentence, organ_sentences
from tests.reasoningkit import edit_reports, shard_copy, tiny_causal_lm

ROOT = Path(__file__).resolve().parent.parent
REPORT = ("FINDINGS: Dense consolidative opacity in the right lower lobe. No pneumothorax. Moderate left pleural "
          "effusion. The heart is normal in size. No acute osseous abnormality.\nIMPRESSION: Right lower lobe "
          "consolidation. Left pleural effusion.")
OTHERS = ["FINDINGS: The lungs are clear. Small right apical pneumothorax. Moderate cardiomegaly.\nIMPRESSION: x.",
          "FINDINGS: Linear opacity at the left lung base, consistent with atelectasis. No pleural effusion. "
          "Displaced rib fracture.\nIMPRESSION: y."]


def test_sentences_map_to_organ_and_condition_with_negation():
    assert classify_sentence("No pleural effusion or pneumothorax.") == ("pleura", "normal")
    assert classify_sentence("Small left apical pneumothorax.") == ("pleura", "pneumothorax")
    assert classify_sentence("Streaky left basilar opacity may reflect atelectasis.") == ("lungs", "atelectasis")
    assert classify_sentence("The heart is markedly enlarged.") == ("heart", "cardiomegaly")
    assert classify_sentence("No acute cardiopulmonary process.") is None
    assert list(organ_sentences(REPORT)) == ["lungs", "pleura", "heart", "bones"]  # impression not perceived


def test_chain_modules_reflection_span_and_seeded_rule():
    tree = build_tree(sentence_counts([REPORT, *OTHERS]), max_examples=2)
    assert tree["pleura"]["pneumothorax"]["examples"] == ["Small right apical pneumothorax."]
    assert tree["mediastinum"]["widening"] == {"count": 0, "examples": []}  # ontology kept without examples
    e = template_chain(REPORT, tree, seed=0, key="s1")
    parts = parse_chain(e["reasoning"])
    assert parts["final report"] == REPORT.strip() and "consolidation" in parts["knowledge"]
    assert [line.count("Thinking:") for line in e["reasoning"].split("\n\n")] == [1, 1, 1, 1]
    a, b = e["corrupt_span"]
    wrong = e["reflection"][a:b]
    organ, to = e["corruption"]["organ"], e["corruption"]["to"]
    assert wrong.startswith(f"- {organ.capitalize()} ({to}):") and to not in e["corruption"]["from"]
    assert "Reflection:" in e["reflection"][b:] and parse_chain(e["reflection"])["final report"] == REPORT.strip()
    # seeded: same (seed, key) -> same corruption; some other seed picks another
    assert template_chain(REPORT, tree, 0, "s1") == e
    assert any(template_chain(REPORT, tree, s, "s1")["corruption"] != e["corruption"] for s in range(1, 20))


def test_final_report_extraction_and_counted_fallback():
    tree = build_tree(sentence_counts([REPORT]), 1)
    chain = template_chain(REPORT, tree, 0, "k")["reasoning"]
    assert extract_final_report(chain) == (REPORT.strip(), False)
    truncated = chain[: chain.index(HEADERS[3])].rstrip()
    text, fell_back = extract_final_report(truncated)
    assert fell_back and text == truncated.split("\n\n")[-1].strip() and parse_chain(truncated) is None
    assert extract_final_report("Final report:\n   \n") == ("Final report:", True)
    assert extract_final_report("") == ("", True)
    texts = [chain, truncated, "just words"]
    assert sum(extract_final_report(t)[1] for t in texts) == 2


def test_target_text_spans():
    tree = build_tree(sentence_counts([REPORT, *OTHERS]), 2)
    e = template_chain(REPORT, tree, 0, "k")
    assert target_text(REPORT, e, "report") == (REPORT.strip(), [])
    assert target_text(REPORT, e, "reasoning") == (e["reasoning"], [])
    assert target_text(REPORT, e, "reflection") == (e["reflection"], [tuple(e["corrupt_span"])])
    assert target_text(REPORT, e, "reflection", include_corrupt=True)[1] == []
    assert target_text(REPORT, None, "reasoning") == (None, [])
    with pytest.raises(ValueError, match="unknown target"):
        target_text(REPORT, e, "topics")


def _annotations(shards_dir, split):
    cfg = DataConfig(shards_dir=shards_dir, loader_workers=0)
    loader = make_loader(cfg, split, rank=0, world_size=1, batch_size=8, seed=0, mode="eval",
                         builder=lambda s: {"key": s.key, "ann": s.annotations.get("reasoning")},
                         collate=lambda items: {"items": items})
    return {it["key"]: it["ann"] for batch in loader for it in batch["items"]}


def test_held_out_reports_never_reach_the_tree_or_overlay(shards, tmp_path):
    copy = shard_copy(shards, tmp_path)
    cfg = ReasoningConfig()
    annotate_reasoning(copy, cfg, SerialPool())
    tree = Path(copy, "assets", "perception_tree", "tree.json").read_bytes()
    assert json.loads(Path(copy, "assets", "perception_tree", "asset.json").read_text())["reads_splits"] == ["train"]
    before = _annotations(copy, "train")
    edit_reports(copy, "test", " Huge right pneumothorax.")
    edit_reports(copy, "validate", " Huge right pneumothorax.")
    annotate_reasoning(copy, cfg, SerialPool())
    assert Path(copy, "assets", "perception_tree", "tree.json").read_bytes() == tree
    assert _annotations(copy, "train") == before
    edit_reports(copy, "train", " Huge right pneumothorax.")  # the control: training reports do count
    assert build_perception_tree(copy, cfg, SerialPool()).read_bytes("tree.json") != tree


def test_local_lm_backend_malformed_output_falls_back_counted(shards, tmp_path):
    """The local causal-LM backend through its real loading code (a tiny random LM saved in the HF
    layout): its output is no chain, so every study gets the template chain and the summary counts it."""
    from shards.passes.reasoning.lm import lm_members

    copy = shard_copy(shards, tmp_path)
    lm = tiny_causal_lm(tmp_path / "lm", [REPORT, *OTHERS] * 4)
    cfg = ReasoningConfig(backend="hf_lm", lm_path=lm, max_new_tokens=4)
    summary = annotate_reasoning(copy, cfg, SerialPool(), make_members=lm_members)
    n = load_manifest(copy).splits["train"]
    assert summary["entries"] == n and summary["backend_template_fallback"] == n == summary["malformed_lm_output"]
    assert summary["producer"]["backend"] == "hf_lm" and summary["producer"]["prompt"] == cfg.prompt
    train = _annotations(copy, "train")
    assert all(a["malformed"] and parse_chain(a["reasoning"]) for a in train.values())
    saved = json.loads(Path(copy, "sidecars", "reasoning.summary.json").read_text())
    assert saved["malformed_lm_output"] == n


FORCED = ("Knowledge:\n- Lungs: The lungs may show consolidation.\nPerception:\n- Lungs (normal): The lungs are clear.\n"
          "Fine-grained report:\nLungs: The lungs are clear.\nFinal report:\nFINDINGS: The lungs are clear.\n"
          "IMPRESSION: No acute process.")


def test_local_lm_backend_keeps_a_parseable_chain(shards, tmp_path):
    """The success path: a tiny random LM whose own generation config constrains greedy decoding to a
    well-formed chain (tests/reasoningkit.py ``forced``).  Its output is prompted, parsed and kept as the
    study's chain (backend hf_lm, final report from the chain), the reflection variant still comes from
    the template rule, and nothing is counted malformed.  It annotates the 21-study validate split as the
    training split (``data.train_split``): each study is a 200-token constrained generation, and the
    124 train studies would cost two minutes of the suite for the same checks."""
    from shards.passes.reasoning.lm import lm_members

    copy = shard_copy(shards, tmp_path)
    lm = tiny_causal_lm(tmp_path / "lm", [REPORT, *OTHERS] * 4, forced=FORCED)
    cfg = ReasoningConfig(backend="hf_lm", lm_path=lm, max_new_tokens=200)
    summary = annotate_reasoning(copy, cfg, SerialPool(), make_members=lm_members, split="validate")
    n = load_manifest(copy).splits["validate"]
    assert summary["entries"] == summary["backend_hf_lm"] == n and summary["malformed_lm_output"] == 0
    annotated = _annotations(copy, "validate")
    assert len(annotated) == n
    for a in annotated.values():
        assert a["backend"] == "hf_lm" and not a.get("malformed") and a["reasoning"] == FORCED
        assert a["final_report"] == parse_chain(FORCED)["final report"] == FORCED.split("Final report:\n")[1]
    reflected = [a for a in annotated.values() if a["corruption"]]
    assert reflected and all("Reflection:" in a["reflection"][a["corrupt_span"][1]:] for a in reflected)
    plain = [a for a in annotated.values() if not a["corruption"]]  # planned not to reflect: the LM's own chain
    assert plain and all(a["reflection"] == FORCED and a["corrupt_span"] is None for a in plain)
    assert all(a is None for a in _annotations(copy, "test").values())
    assert all(a is None for a in _annotations(copy, "train").values())


def test_annotation_follows_the_configured_train_split(shards, tmp_path):
    """``data.train_split`` (here another split name) is what the tree reads and the overlay covers."""
    copy = shard_copy(shards, tmp_path)
    summary = annotate_reasoning(copy, ReasoningConfig(), SerialPool(), split="validate")
    m = load_manifest(copy)
    assert summary["entries"] == m.splits["validate"] > 0 and summary["splits"] == ["validate"]
    assert m.sidecars["reasoning"].reads_splits == ["validate"]
    assert all(a and parse_chain(a["reasoning"]) for a in _annotations(copy, "validate").values())
    assert all(a is None for a in _annotations(copy, "train").values())


@pytest.mark.slow
def test_cli_annotates_training_studies_only_on_ray(shards, tmp_path):
    copy = shard_copy(shards, tmp_path)
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "annotate", "reasoning", str(ROOT / "configs/tiny.yaml"),
                           "--shards", copy, "cluster.ray_temp_dir=/tmp/rr-rs"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = load_manifest(copy)
    info = m.sidecars["reasoning"]
    assert info.reads_splits == ["train"] and info.producer["backend"] == "template"
    assert set(info.shards) == {s.file for s in m.shards if s.split == "train"}
    train = _annotations(copy, "train")
    assert len(train) == m.splits["train"] and all(a and parse_chain(a["reasoning"]) for a in train.values())
    assert all(a["reflection"] for a in train.values())  # every study has a reflection-stage row
    dirs = [a["corruption"]["direction"] for a in train.values() if a["corruption"]]
    assert 0 < dirs.count("normal_to_abnormal") == dirs.count("abnormal_to_normal") == len(dirs) // 2
    for split in ("validate", "test"):
        held = _annotations(copy, split)
        assert held and all(a is None for a in held.values())
    summary = json.loads(Path(copy, "sidecars", "reasoning.summary.json").read_text())
    assert summary["entries"] == summary["backend_template"] == m.splits["train"]
    assert "reasoning overlay: sidecar: reasoning" in proc.stdout


def test_reflection_plan_is_balanced_by_direction_and_corrections_are_the_true_lines():
    """Half the studies reflect; as many corrections go normal->abnormal as abnormal->normal; each correction
    is the study's own perception line, in both chain formats."""
    reports = {f"k{i}": r for i, r in enumerate([REPORT, *OTHERS] * 12)}
    tree = build_tree(sentence_counts(reports.values()), 2)
    feas = {k: feasible_directions(perception_lines(r), tree) for k, r in reports.items()}
    plan = plan_reflections(feas, 0.5, seed=0)
    assert plan == plan_reflections(feas, 0.5, seed=0) and plan != plan_reflections(feas, 0.5, seed=1)
    for fmt in ("paper", "compact"):
        entries = {k: template_chain(r, tree, 0, k, reflect=plan[k], fmt=fmt) for k, r in reports.items()}
        dirs = [e["corruption"]["direction"] for e in entries.values() if e["corruption"]]
        assert dirs.count("normal_to_abnormal") == dirs.count("abnormal_to_normal") == len(reports) // 4
        for k, e in entries.items():
            if e["corruption"] is None:  # no reflection: the reflection row is the plain chain
                assert e["reflection"] == e["reasoning"] and "Reflection:" not in e["reflection"]
                continue
            a, b = e["corrupt_span"]
            wrong, rest = e["reflection"][a:b], e["reflection"][b:]
            fix = rest.split("Reflection:", 1)[1].split("\n")[1]
            assert fix in e["reasoning"].splitlines() and wrong not in e["reasoning"].splitlines()
            assert ("(normal)" in wrong) == (e["corruption"]["direction"] == "normal_to_abnormal")
    compact = template_chain(REPORT, tree, 0, "k0", fmt="compact")["reasoning"]
    paper = template_chain(REPORT, tree, 0, "k0")["reasoning"]
    assert len(compact) < 0.6 * len(paper) and extract_final_report(compact) == (REPORT.strip(), False)
    assert all(h in compact for h in HEADERS)
    # the seeded rule on its own (reflect="any", the pre-plan behaviour) is not balanced on these studies
    old = [template_chain(r, tree, 0, k)["corruption"]["direction"] for k, r in reports.items()]
    assert old.count("normal_to_abnormal") != old.count("abnormal_to_normal")


def test_final_report_extraction_with_several_reflections_and_restarts():
    trace = ("Perception:\n- Heart (normal)\nReflection: heart again, corrected:\n- Heart (cardiomegaly)\n"
             "Final report:\nThe heart is normal in size.\nReflection: Looking at the lungs again, that description "
             "does not fit the image; I correct it.\n- Lungs (edema)\n\nFinal report:\nCardiomegaly. Mild edema."
             "\nThinking: First I recall what can be found in each organ of a chest radiograph.\nKnowledge:\n- Lungs")
    assert extract_final_report(trace) == ("Cardiomegaly. Mild edema.", False)  # the last one, cut at the restart
    # an empty last final-report section: the previous one with text is scored
    assert extract_final_report(trace[:trace.index("Thinking:")] + "\nFinal report:\n") == \
        ("Cardiomegaly. Mild edema.", False)
    # a report cut by a perception line (the model started describing again)
    assert extract_final_report("Final report:\nNo acute disease.\n- Lungs (normal)\n") == ("No acute disease.", False)
