"""LLaVA-TA on masks from `rrg shards masks`: a segmenter with CXAS channel names, mapped to the 7 regions
through ``model.options.region_channels``, drives the segmented image S instead of the demo's drawn masks."""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch

from configs.parallel import SerialPool
from shards.manifest import iter_json_records, load_manifest
from shards.reader import ShardLoader
from shards.passes.masks.segmenter import UNet
from shards.passes.masks.run import masks_from_config
from modeling.families.llava_ta.topic_rows import TopicDataError, segment_image
from trainer.config import load_config

CXAS7 = ["left_lung", "right_lung", "heart", "mediastinum", "diaphragm", "trachea", "spine"]
# the segmenter has no ribs / vertebrae / abdomen channels: the user says which of its channels stand in
REGIONS = {"ribs": ["left_lung", "right_lung"], "vertebrae": ["spine"], "abdomen": ["diaphragm"],
           "mediastinum": ["mediastinum", "trachea"]}


@pytest.fixture(scope="module")
def masked_shards(shards, tmp_path_factory):
    """The session's tiny shards with a tiny random U-Net's masks (the masks pass, on the serial pool)."""
    from shards.reader import iter_decoded
    from shards.passes.masks.segmenter import load_segmenter

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ta_masks")
    unet = str(root / "unet")
    net = UNet(1, len(CXAS7), width=4, depth=2)
    net.save_pretrained(unet, CXAS7, input_size=32)
    # centre each channel's logits on the demo images, so that every mask covers part of the image (a random
    # head is nearly all on or all off); what matters here is that the masks are the segmenter's, not drawn
    m = load_manifest(shards)
    views = [s.images[0] for s, _ in zip(iter_decoded(m, m.split_shards("train")[0]), range(8))]
    probs = np.stack([load_segmenter("hf_dir", unet, [], 0)(v) for v in views]).clip(1e-6, 1 - 1e-6)
    logits = np.log(probs / (1 - probs)).transpose(1, 0, 2, 3).reshape(len(CXAS7), -1)
    with torch.no_grad():
        net.head.bias -= torch.from_numpy(np.median(logits, 1)).float()
    net.save_pretrained(unet, CXAS7, input_size=32)
    work = root / "shards"
    shutil.copytree(shards, work)
    data = load_config("configs/tiny.yaml", [f"data.shards_dir={work}", f"data.passes.masks.path={unet}"]).data
    masks_from_config(data, SerialPool())
    return str(work)


def _family(region_channels=None):
    from modeling.families.llava_ta.family import LlavaTAFamily

    cfg = load_config("configs/tiny.yaml", []).model
    cfg.family, cfg.options = "llava_ta", ({"region_channels": region_channels} if region_channels else {})
    return LlavaTAFamily(cfg)


def _rows(shards_dir: str, builder) -> list:
    loader = ShardLoader(load_manifest(shards_dir), "validate", rank=0, world_size=1, batch_size=1, seed=0,
                         num_workers=0, shuffle_buffer=1, builder=builder,
                         collate=lambda items: {"sample_weight": torch.ones(len(items)), "item": items[0]},
                         verify="checksum", max_skip_fraction=0.0, mode="eval")
    return [b["item"] for b in loader]


def test_segmented_image_reads_the_masks_pass_through_the_configured_region_table(masked_shards):
    fam = _family(REGIONS)
    onto = fam.ontology()
    assert onto.channels("organ-bones") == ["left_lung", "right_lung", "spine"]
    tok = fam.tokenizer(["No pneumothorax. Heart size is normal."] * 4)
    build = fam.sample_builder(tok, "eval")

    def check(sample):
        row = build(sample)[0]
        image = sample.images[0]
        expected = []
        for topic in onto.names:
            wanted = [sample.mask_channels.index(c) for c in onto.channels(topic)]
            mask = np.any(sample.masks[wanted], axis=0)
            seg = segment_image(image, mask)
            assert (seg[~mask] == 0).all() and np.array_equal(seg[mask], image[mask])
            expected.append(build.preprocess(seg))
        return {"channels": list(sample.mask_channels), "segments": row["segments"],
                "expected": torch.stack(expected), "topics": row["segment_topics"], "area": float(sample.masks.mean())}

    rows = _rows(masked_shards, check)
    assert len(rows) == load_manifest(masked_shards).splits["validate"] > 0
    drawn = next(iter_json_records(load_manifest(masked_shards), "validate"))["masks"]["channels"]
    assert drawn != CXAS7  # the shards still hold the demo's drawn masks; the reader serves the segmenter's
    for r in rows:
        assert r["channels"] == CXAS7 and r["topics"] == onto.names
        assert torch.equal(r["segments"], r["expected"])
    assert len({round(r["area"], 6) for r in rows}) > 1 and all(0.05 < r["area"] < 0.95 for r in rows)
    # topics with different regions see different parts of the image
    heart, bones = onto.order["organ-heart"], onto.order["organ-bones"]
    assert any(not torch.equal(r["segments"][heart], r["segments"][bones]) for r in rows)


def test_without_the_region_table_the_missing_channels_are_named(masked_shards):
    fam = _family()
    tok = fam.tokenizer(["No pneumothorax."] * 4)
    build = fam.sample_builder(tok, "eval")
    with pytest.raises(TopicDataError, match="region_channels"):
        _rows(masked_shards, lambda s: build(s)[0])
    with pytest.raises(Exception, match="region_channels"):
        _family({"spleen": ["left_lung"]})  # not a region of the ontology



def test_report_overlay_uses_the_channels_the_model_used(masked_shards):
    """The HTML topic rows draw the segmenter's channels named in the trace, not the built-in table's."""
    import json

    from trainer.evaluation.topic_html import topic_rows_html

    onto = _family(REGIONS).ontology()
    sample = _rows(masked_shards, lambda s: {"image": s.images[0], "masks": s.masks, "channels": s.mask_channels,
                                             "reference": s.report})[0]
    trace = json.dumps([{"topic": "organ-bones", "sentence": "Bones are intact.", "channels": onto.channels("organ-bones")}])
    card = {"reference": sample["reference"], "trace": trace, "image": sample["image"], "masks": sample["masks"],
            "mask_channels": sample["channels"]}
    html = topic_rows_html(card)
    bones = html[html.index('data-topic="organ-bones"'):].split("</tr>")[0]
    assert "data:image/png;base64," in bones  # built-in table: ribs/vertebrae, which this segmenter lacks
    assert "data:image/png;base64," not in topic_rows_html({**card, "trace": json.dumps(
        [{"topic": "organ-bones", "sentence": "Bones are intact."}])}).split('data-topic="organ-bones"')[1].split("</tr>")[0]
