"""``rrg annotate topics``: the topic overlay on Ray (training split only, provenance) and the HF LM backend."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from configs.parallel import SerialPool
from shards.passes.topics.config import TopicsConfig
from shards.manifest import load_manifest
from shards.reader import iter_decoded
from shards.passes.topics.ontology import ASSET_FILE, ASSET_NAME, Ontology
from shards.passes.topics.annotate import annotate_report, annotate_topics, lm_answer, parse_lm_answer
from shards.passes.topics.decompose import decompose

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture()
def copy(shards, tmp_path):
    out = tmp_path / "shards"
    shutil.copytree(shards, out)
    return str(out)


def _entries(shards_dir):
    m = load_manifest(shards_dir)
    return {s.key: (info.split, s.report, s.annotations.get("topics")) for info in m.shards
            for s in iter_decoded(m, info)}


@pytest.mark.slow
def test_annotate_topics_cli_on_ray_train_split_only(copy):
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "annotate", "topics", "configs/tiny.yaml",
                           f"data.shards_dir={copy}", "cluster.ray_temp_dir=/tmp/rr-ta"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    m = load_manifest(copy)
    info = m.sidecars["topics"]
    assert info.reads_splits == ["train"] and info.producer["backend"] == "rule"
    assert set(info.shards) == {s.file for s in m.shards if s.split == "train"}
    assert Ontology.from_json(m.assets[ASSET_NAME].read_json(ASSET_FILE)).names == Ontology().names
    entries = _entries(copy)
    for key, (split, report, ann) in entries.items():
        if split != "train":
            assert ann is None, key  # held-out studies carry no reference topics
        else:
            assert ann["backend"] == "rule" and [(r["topic"], r["sentence"]) for r in ann["rows"]] == \
                [(r["topic"], r["sentence"]) for r in decompose(report)[0]]
    summary = json.loads((Path(copy) / "sidecars" / "topics.summary.json").read_text())
    assert summary["studies"] == sum(1 for s, _, _ in entries.values() if s == "train") > 0
    assert "topics:" in proc.stdout


def test_parse_lm_answer_exact_and_malformed():
    good = "disease-pneumothorax: Pneumothorax is absent\n\n- organ-heart: Heart size is normal.\n"
    assert parse_lm_answer(good) == ([{"topic": "organ-heart", "sentence": "Heart size is normal."},
                                      {"topic": "disease-pneumothorax", "sentence": "Pneumothorax is absent."}], 0)
    assert parse_lm_answer("the report is fine") == (None, 1)  # no topic line
    assert parse_lm_answer("") == (None, 0)  # an empty answer
    assert parse_lm_answer("disease-unicorn: A unicorn.") == (None, 1)  # not in the ontology
    assert parse_lm_answer("organ-heart: Normal.\norgan-heart: Enlarged.") == (None, 1)  # a topic twice
    # one valid line plus garbage is malformed too (README: not all `topic: sentence` lines over known topics)
    assert parse_lm_answer("Here are the topics:\norgan-heart: Normal.\nthe rest is fine\n") == (None, 2)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory):
    """A random-initialised causal LM + tokenizer saved in the real Hugging Face layout."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from modeling.tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("topic_lm")
    tok = train_tokenizer(["No pleural effusion or pneumothorax.", "organ-heart: Heart size is normal."] * 20, 320)
    tok.save_pretrained(path)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512)
    LlamaForCausalLM(cfg).save_pretrained(path)
    return str(path)


def test_hf_backend_random_lm_is_malformed_counted_and_falls_back(tiny_lm, copy):
    cfg = TopicsConfig(backend="hf", model_path=tiny_lm, max_new_tokens=8)
    report = "No pleural effusion or pneumothorax. Mild cardiomegaly."
    entry = annotate_report(cfg, report)
    assert entry["backend"] == "rule-fallback" and entry["counts"]["malformed"] == 1
    assert entry["counts"].get("malformed_lines", 0) == parse_lm_answer(lm_answer(cfg, report))[1]
    assert entry["rows"] == decompose(report)[0]
    summary = annotate_topics(copy, TopicsConfig(backend="hf", model_path=tiny_lm, max_new_tokens=4,
                                                 splits=["test"]), pool=SerialPool())
    assert summary["backends"] == {"rule-fallback": summary["studies"]} and summary["studies"] > 0
    assert summary["counts"]["malformed"] == summary["studies"]
    assert load_manifest(copy).sidecars["topics"].producer["model_path"] == tiny_lm


def _edit_held_out_reports(shards_dir: str) -> int:
    """Rewrite every non-training study's report (tar member + manifest checksum); returns how many."""
    import io
    import tarfile

    from shards.manifest import file_sha256

    m, edited = load_manifest(shards_dir), 0
    for info in m.shards:
        if info.split == "train":
            continue
        path = m.path_of(info)
        with tarfile.open(path) as tf:
            members = [(ti, tf.extractfile(ti).read()) for ti in tf if ti.isfile()]
        with tarfile.open(path, "w") as tf:
            for ti, data in members:
                if ti.name.endswith(".json"):
                    record = json.loads(data)
                    record["report"]["text"] = "Large left pneumothorax. Massive cardiomegaly. No fracture."
                    data, edited = json.dumps(record).encode(), edited + 1
                    ti.size = len(data)
                tf.addfile(ti, io.BytesIO(data))
        info.sha256, info.num_bytes = file_sha256(path), path.stat().st_size
    m.write()
    return edited


def test_topics_read_the_training_split_only(copy):
    before = annotate_topics(copy, TopicsConfig(), pool=SerialPool())
    m0 = load_manifest(copy)
    assert _edit_held_out_reports(copy) > 0
    after = annotate_topics(copy, TopicsConfig(), pool=SerialPool())
    m1 = load_manifest(copy)
    assert m1.fingerprint != m0.fingerprint  # the held-out shards did change
    assert m1.sidecars["topics"].shards == m0.sidecars["topics"].shards  # byte-identical overlay tars
    assert m1.assets[ASSET_NAME].meta["files"] == m0.assets[ASSET_NAME].meta["files"]
    assert before["rows_per_topic"] == after["rows_per_topic"]


def test_summary_counts_drops_merges_and_fallback_topic_per_study(copy):
    """The summary totals every count of the per-study entries and names studies that have each."""
    summary = annotate_topics(copy, TopicsConfig(), pool=SerialPool())
    entries = [ann for split, _, ann in _entries(copy).values() if split == "train"]
    assert summary["rows"] == sum(len(a["rows"]) for a in entries)
    assert summary["counts"]["sentences"] == sum(a["counts"]["sentences"] for a in entries)
    for kind, n in summary["studies_with"].items():
        assert n == sum(1 for a in entries if a["counts"].get(kind)) and summary["examples"][kind]
    assert set(summary["dropped_sentences"]) <= {"comparison", "speculation", "cross_reference"}
    assert "unassigned" not in summary["counts"] and "duplicate" not in summary["counts"]
