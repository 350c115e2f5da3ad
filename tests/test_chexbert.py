"""CheXbert-compatible labeler: the published state-dict layout, batching, label mapping, refusals."""
from __future__ import annotations

import pickle

import pytest
import torch

from configs.labelsets import CHEXPERT_LABELS
from shards.labeling import LABELERS, CheXbertLabeler, LabelInputError, label_set_of
from shards.labeling.chexbert import CHEXBERT_ORDER
from tests.chexbertkit import make_chexbert

REPORTS = ["No pleural effusion or pneumothorax.", "Mild cardiomegaly. Small left pleural effusion.",
           "The lungs are clear.", "Possible right lower lobe consolidation, concerning for pneumonia.",
           "Heart size is normal. Tube in place.", ""]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_chexbert(tmp_path_factory.mktemp("chexbert"))


def test_loads_the_published_layout(tiny):
    ckpt, tok, sd = tiny
    assert any(k.startswith("module.bert.encoder.layer.1.") for k in sd) and "module.linear_heads.13.weight" in sd
    lab = LABELERS.get("chexbert")(checkpoint=str(ckpt), tokenizer=str(tok))
    assert lab.label_set == "chexpert" and label_set_of(lab).name == "chexpert"
    loaded = lab.model.state_dict()
    for key, value in sd.items():
        assert torch.equal(loaded[key.removeprefix("module.")], value), key
    assert lab.model.linear_heads[13].out_features == 2 and lab.model.linear_heads[0].out_features == 4


def test_batch_equals_one_by_one(tiny):
    ckpt, tok, _ = tiny
    lab = CheXbertLabeler(checkpoint=str(ckpt), tokenizer=str(tok), batch_size=4)
    batched = lab.logits(REPORTS)
    single = [lab.logits([r])[0] for r in REPORTS]
    for b, s in zip(batched, single):
        for hb, hs in zip(b, s):
            torch.testing.assert_close(hb, hs, atol=1e-5, rtol=1e-5)
    labels = lab(REPORTS)
    assert labels == [lab([r])[0] for r in REPORTS]
    assert all(list(row) == CHEXPERT_LABELS for row in labels)
    assert len({tuple(row.values()) for row in labels}) > 1, "random heads should not label every report alike"


def test_head_classes_map_to_values_in_chexpert_order(tiny, tmp_path):
    _, tok, sd = tiny
    sd = {k: v.clone() for k, v in sd.items()}
    wanted = {"Cardiomegaly": 1, "Lung Opacity": 2, "Lung Lesion": 3, "Edema": 0, "No Finding": 1}
    for i, name in enumerate(CHEXBERT_ORDER):
        sd[f"module.linear_heads.{i}.weight"].zero_()
        bias = sd[f"module.linear_heads.{i}.bias"]
        bias.zero_()
        bias[wanted.get(name, 0)] = 10.0
    path = tmp_path / "forced.pth"
    torch.save({"model_state_dict": sd}, path)
    row = CheXbertLabeler(checkpoint=str(path), tokenizer=str(tok))(["Mild cardiomegaly."])[0]
    assert row["Cardiomegaly"] == 1.0 and row["Lung Opacity"] == 0.0 and row["Lung Lesion"] == -1.0
    assert row["Edema"] is None and row["No Finding"] == 1.0
    assert all(row[n] is None for n in CHEXPERT_LABELS if n not in wanted)


def test_safetensors_gives_the_same_labels(tiny, tmp_path):
    from safetensors.torch import save_file

    ckpt, tok, sd = tiny
    save_file({k: v.contiguous() for k, v in sd.items()}, str(tmp_path / "chexbert.safetensors"))
    a = CheXbertLabeler(checkpoint=str(ckpt), tokenizer=str(tok))(REPORTS)
    b = CheXbertLabeler(checkpoint=str(tmp_path / "chexbert.safetensors"), tokenizer=str(tok))(REPORTS)
    assert a == b


class _Payload:
    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_wrong_files_are_refused_without_running_code(tiny, tmp_path):
    _, tok, sd = tiny
    marker = tmp_path / "PWNED"
    _Payload.marker = marker
    evil = tmp_path / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model_state_dict": {"x": _Payload()}}, f)
    with pytest.raises(LabelInputError, match="refused: not a plain tensor state dict"):
        CheXbertLabeler(checkpoint=str(evil), tokenizer=str(tok))
    assert not marker.exists(), "the pickle payload ran"

    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint")
    with pytest.raises(LabelInputError, match="refused"):
        CheXbertLabeler(checkpoint=str(text), tokenizer=str(tok))
    other = tmp_path / "other.pth"
    torch.save({"model_state_dict": {"module.encoder.weight": torch.zeros(2)}}, other)
    with pytest.raises(LabelInputError, match="not a CheXbert state dict .*linear_heads"):
        CheXbertLabeler(checkpoint=str(other), tokenizer=str(tok))
    bad_st = tmp_path / "bad.safetensors"
    bad_st.write_bytes(b"\x00" * 16)
    with pytest.raises(LabelInputError, match="not a safetensors file"):
        CheXbertLabeler(checkpoint=str(bad_st), tokenizer=str(tok))
    with pytest.raises(LabelInputError, match="checkpoint not found"):
        CheXbertLabeler(checkpoint=str(tmp_path / "nope.pth"), tokenizer=str(tok))
    with pytest.raises(LabelInputError, match="tokenizer directory not found"):
        CheXbertLabeler(checkpoint=str(tiny[0]), tokenizer=str(tmp_path / "no_tok"))
    shrunk = dict(sd)
    shrunk["module.linear_heads.3.weight"] = torch.zeros(4, 16)
    torch.save({"model_state_dict": shrunk}, tmp_path / "shape.pth")
    with pytest.raises(LabelInputError, match="does not fit the CheXbert layout .*linear_heads.3.weight"):
        CheXbertLabeler(checkpoint=str(tmp_path / "shape.pth"), tokenizer=str(tok))
