"""The narrative-bias probe's prefix handling and rows, and the ReXrank JSON round trip.

The end-to-end probe on the trained demo (``rrg eval configs/demo.yaml --checkpoint latest
--narrative-bias``) is the README's measurement; here every piece it is built from is checked on a
tiny llava_rad model: prefixes are the training tokens of the report's first sentences, the
completion is scored against the last K sentences, the black pass really blanks the image, and the
HTML draws the curve.
"""
from __future__ import annotations

import json

import pytest
import torch

from configs.schema import ConfigError
from launcher.cli import main
from trainer.evaluation import narrative as nb
from trainer.evaluation.report_html import narrative_section
from trainer.evaluation.rexrank import read_rexrank, write_rexrank

REPORT = "Heart size is normal. There is a small left pleural effusion. No pneumothorax."


def test_prefix_and_tail_split_on_sentences():
    assert nb.split_sentences(REPORT) == ["Heart size is normal.", "There is a small left pleural effusion.",
                                          "No pneumothorax."]
    assert nb.prefix_and_tail(REPORT, 1) == ("Heart size is normal. There is a small left pleural effusion.",
                                             "No pneumothorax.")
    assert nb.prefix_and_tail(REPORT, 2)[1] == "There is a small left pleural effusion. No pneumothorax."
    assert nb.prefix_and_tail(REPORT, 3) is None  # no sentence left for the prefix


def test_prefix_tokens_are_the_training_tokens_of_the_prefix():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from modeling.templates import get_template

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    bpe.train_from_iterator([REPORT] * 5, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>", "<pad>"]))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, unk_token="<unk>", pad_token="<pad>")
    for name in ("plain", "vicuna"):
        template = get_template(name)
        prefix, _ = nb.prefix_and_tail(REPORT, 1)
        ids = nb.prefix_token_ids(tok, template, prefix, REPORT)
        full = tok(template.target(REPORT), add_special_tokens=False)["input_ids"]
        assert full[:len(ids)] == ids and 0 < len(ids) < len(full), name  # a prefix of the training sequence
        assert " ".join(tok.decode(ids).replace("\u2581", " ").split()) == prefix


def test_with_prefixes_left_pads_and_drops_short_studies():
    batch = {"input_ids": torch.tensor([[0, 0, 5, 6], [7, 8, 9, 10], [0, 4, 4, 4]]),
             "attention_mask": torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1], [0, 1, 1, 1]]),
             "sample_weight": torch.tensor([1.0, 1.0, 0.0]), "study_ids": ["a", "b", "b"]}
    out = nb.with_prefixes(batch, [[11, 12, 13], None, [3]], pad_id=0)
    assert out["input_ids"].tolist() == [[5, 6, 11, 12, 13], [0, 7, 8, 9, 10], [0, 4, 4, 4, 3]]
    assert out["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [0, 1, 1, 1, 1], [0, 1, 1, 1, 1]]
    assert out["sample_weight"].tolist() == [1.0, 0.0, 0.0]  # no prefix for b: skipped; the filler stays 0
    with pytest.raises(ConfigError, match="one prompt row per study"):
        nb.with_prefixes({**batch, "sample_weight": torch.ones(3)}, [[1], [1], [1]], pad_id=0)


def test_rows_and_curve():
    real = {"n": 10, "ce_macro_f1_5": 0.6, "bleu_4": 0.3, "ce_macro_f1_5_ci_low": 0.1, "ce_f1_edema": 0.5}
    black = {"n": 10, "ce_macro_f1_5": 0.2, "bleu_4": 0.25}
    rows = nb.rows_from_scores({1: (dict(real, ce_macro_f1_5=0.5), black), 2: (real, black)})
    assert [r["k"] for r in rows] == [1, 2]
    assert rows[1]["gain_ce_macro_f1_5"] == pytest.approx(0.4) and rows[0]["gain_ce_macro_f1_5"] == pytest.approx(0.3)
    assert "gain_ce_macro_f1_5_ci_low" not in rows[0] and "gain_ce_f1_edema" not in rows[0]
    assert set(rows[0]) == {"k", "n", "ce_macro_f1_5_real", "ce_macro_f1_5_black", "gain_ce_macro_f1_5",
                            "bleu_4_real", "bleu_4_black", "gain_bleu_4"}
    html = narrative_section(rows)
    assert html.count('<tr data-k=') == 2 and 'class="narrative-curve"' in html
    assert html.count('<polyline class="gain"') == 2 and "oracle input" in html


def test_rexrank_json_round_trip(tmp_path):
    test_set = {"s1": {"image_path": ["/p1/a.jpg"], "section_findings": "Small left effusion.",
                       "section_impression": "Effusion.", "context": "<context>Age:60</context>"},
                "s2": {"image_path": ["/p2/b.jpg"], "findings": "Lungs are clear.", "impression": None}}
    src = tmp_path / "test.json"
    src.write_text(json.dumps(test_set))
    rows = [{"id": "s1", "generated": "Findings: Small left pleural effusion. Impression: Effusion.", "files": ["x"]},
            {"id": "s2", "generated": "Findings: No acute process.", "files": ["y"]}]
    sub = tmp_path / "sub.json"
    written = write_rexrank(rows, str(sub), str(src))
    assert written["s1"]["context"] == "<context>Age:60</context>"  # the input entry is kept
    assert written["s1"]["model_prediction"] == rows[0]["generated"]
    records = read_rexrank(str(sub))
    assert [r["id"] for r in records] == ["s1", "s2"]
    assert records[0]["reference"] == "Findings: Small left effusion. Impression: Effusion."  # ReXrank's split_json
    assert records[1]["reference"] == "Findings: Lungs are clear. Impression: None"
    assert main(["eval", "--predictions", str(sub), "--out", str(tmp_path / "o"), "--no-meteor", "--bootstrap", "0"]) == 0
    preds = [json.loads(x) for x in (tmp_path / "o" / "predictions.jsonl").read_text().splitlines()]
    assert [p["generated"] for p in preds] == [r["generated"] for r in rows]
    m = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert m["n"] == 2 and "rouge_1" in m
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"s1": {"section_findings": "x", "section_impression": "y"}}))
    assert main(["eval", "--predictions", str(bad), "--out", str(tmp_path / "b")]) == 3
    assert not (tmp_path / "b" / "metrics.json").exists()


def test_narrative_batches_limit_and_tails():
    class Tok:
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=False, return_offsets_mapping=False):
            words = [(m.start(), m.end()) for m in __import__("re").finditer(r"\S+", text)]
            return {"input_ids": [len(text[a:b]) for a, b in words], "offset_mapping": words}

    from modeling.templates import get_template

    def batch(ids):
        return {"input_ids": torch.ones(len(ids), 2, dtype=torch.long), "attention_mask": torch.ones(len(ids), 2),
                "sample_weight": torch.ones(len(ids)), "study_ids": ids, "references": [REPORT, "One sentence."][:len(ids)]}

    out = list(nb.narrative_batches([batch(["a", "b"]), batch(["c"])], Tok(), get_template("plain"), 1, limit=1))
    assert len(out) == 1 and out[0]["sample_weight"].tolist() == [1.0, 0.0]  # only the first study is probed
    assert out[0]["references"] == ["No pneumothorax.", ""]
    assert out[0]["input_ids"].shape[1] == 2 + len(nb.split_sentences(REPORT)[0].split()) + 7  # prompt + prefix words


@pytest.mark.slow
def test_narrative_probe_and_rexrank_generate_end_to_end(shards, tmp_path):
    """A tiny random llava_rad export: ``run_eval(..., narrative_bias=True)`` writes one row per K with the
    real/black/gain keys, stamps the oracle input and draws the curve; ``rrg generate --format rexrank`` on the
    test studies' PNGs writes a ReXrank JSON that ``rrg eval --predictions`` scores with eval's predictions."""
    import shutil

    from configs.parallel import SerialPool
    from tests.test_generate_families import MODEL, demo_png_folders, export_untrained, write_config
    from trainer.config import load_config
    from trainer.evaluation.evaluate import run_eval

    shutil.copytree(shards, tmp_path / "shards")
    cfg_path = write_config(tmp_path, f"data:\n  shards_dir: {tmp_path / 'shards'}\nmodel:\n  family: llava_rad\n{MODEL}")
    cfg = load_config(str(cfg_path), ["eval.narrative_bias.max_k=2", "eval.max_new_tokens=8"])
    export = export_untrained(cfg, tmp_path / "run" / "export", "projector")
    flat = run_eval(cfg, pool=SerialPool(), model_dir=str(export), out=str(tmp_path / "eval"), narrative_bias=True)
    rows = flat["narrative_bias"]
    assert [r["k"] for r in rows] == [1, 2] and all(r["n"] > 0 for r in rows)
    for r in rows:
        for key in ("ce_macro_f1_5", "bleu_4", "rouge_1"):
            assert r[f"gain_{key}"] == pytest.approx(r[f"{key}_real"] - r[f"{key}_black"])
    assert flat["narrative_bias_oracle_inputs"] == [nb.ORACLE_NOTE]
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert saved["narrative_bias"] == rows
    lines = [json.loads(x) for x in (tmp_path / "eval" / "predictions_narrative_bias.jsonl").read_text().splitlines()]
    real = {(x["k"], x["id"]): x for x in lines if x["image"] == "real"}
    black = {(x["k"], x["id"]): x for x in lines if x["image"] == "black"}
    assert real.keys() == black.keys() and len(real) == sum(r["n"] for r in rows)
    refs = {p["id"]: p["reference"] for p in map(json.loads, (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines())}
    for (k, sid), x in real.items():
        assert x["reference"] == nb.prefix_and_tail(refs[sid], k)[1]  # scored on the completed sentences only
    assert sum(real[key]["generated"] != black[key]["generated"] for key in real) > 0, "the black pass changed nothing"
    html = (tmp_path / "eval" / "report.html").read_text()
    assert 'class="narrative-curve"' in html and html.count("<tr data-k=") == 2

    folders = demo_png_folders(cfg, tmp_path / "pngs")
    test_set = {sid: {"image_path": files, "section_findings": refs[sid], "section_impression": None}
                for sid, files in folders.items()}
    (tmp_path / "test.json").write_text(json.dumps(test_set))
    sub = tmp_path / "sub.json"
    assert main(["generate", "--model-dir", str(export), str(tmp_path / "pngs"), "--format", "rexrank",
                 "--rexrank-input", str(tmp_path / "test.json"), "--out", str(sub)]) == 0
    written = json.loads(sub.read_text())
    assert sorted(written) == sorted(folders) and all(written[s]["image_path"] == folders[s] for s in written)
    assert main(["eval", "--predictions", str(sub), "--out", str(tmp_path / "scored"), "--no-meteor",
                 "--bootstrap", "0"]) == 0
    scored = {p["id"]: p for p in map(json.loads, (tmp_path / "scored" / "predictions.jsonl").read_text().splitlines())}
    evald = {p["id"]: p for p in map(json.loads, (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines())}
    for sid, p in scored.items():
        assert p["generated"] == evald[sid]["generated"]  # generate == eval, carried through the ReXrank file
        assert p["reference"] == f"Findings: {refs[sid]} Impression: None"
