"""LLaVA-TA / LLaVA-T: segmented images, topic fan-out, stages, selection and oracle inputs."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from modeling.family import GenConfig
from modeling.config import LoraConfig
from modeling.families.llava_ta.family import LlavaTAFamily, LlavaTFamily
from modeling.tuning import TuningSpec
from modeling.families.llava_ta.topic_rows import region_mask, segment_image
from shards.demo import make_study
from shards.records import DecodedSample
from shards.passes.topics.ontology import Ontology
from trainer.config import load_config
from shards.passes.topics.decompose import decompose


def _sample(i: int, size: int = 64) -> DecodedSample:
    s = make_study(i, image_size=size, two_view_fraction=0.0)
    rows, _ = decompose(s.report)
    return DecodedSample(s.study_id, "train-000000.tar", {"report": {"text": s.report}, "study_id": s.study_id},
                         [s.views[0].image], s.masks, list(s.mask_channels), annotations={"topics": {"rows": rows}})


def _family(name="llava_ta", **options):
    cfg = load_config("configs/tiny.yaml", []).model
    cfg.family = name
    cfg.options = dict(options)
    return {"llava_ta": LlavaTAFamily, "llava_t": LlavaTFamily}[name](cfg)


@pytest.fixture(scope="module")
def ta():
    torch.manual_seed(0)
    fam = _family(threshold=0.5, crop=False)  # non-empty options reach every part of the family
    samples = [_sample(i) for i in range(4)]
    tok = fam.tokenizer([s.report for s in samples] + [r["sentence"] for s in samples
                                                       for r in s.annotations["topics"]["rows"]])
    return fam, tok, fam.build_model(tok).eval(), samples


def test_segmented_image_is_zero_outside_the_regions_and_equal_inside():
    onto, s = Ontology(), _sample(3, size=128)
    image = s.images[0]
    for topic in onto.names:
        m = region_mask(s.masks, s.mask_channels, onto.channels(topic), s.key)
        seg = segment_image(image, m)
        assert m.sum() > 50 and (m & (image > 0)).any(), topic
        assert (seg[~m] == 0).all() and np.array_equal(seg[m], image[m]), topic
        rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
        crop = segment_image(image, m, crop=True)
        assert crop.shape == (rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1)
        assert np.array_equal(crop, seg[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
    heart = region_mask(s.masks, s.mask_channels, onto.channels("organ-heart"), s.key)
    ribs = region_mask(s.masks, s.mask_channels, onto.channels("organ-bones"), s.key)
    assert not np.array_equal(heart, ribs)  # different topics see different parts


def test_study_fans_out_into_weighted_topic_rows_in_ontology_order(ta):
    fam, tok, model, samples = ta
    build = fam.sample_builder(tok, "train")
    onto = Ontology()
    for s in samples:
        rows = build(s)
        assert [r["topic"] for r in rows] == [r["topic"] for r in onto.sort(s.annotations["topics"]["rows"])]
        assert abs(sum(r["sample_weight"] for r in rows) - 1.0) < 1e-6 and len(rows) >= 2
        assert rows[0]["pixel_values"].shape == (2, 3, 32, 32)
        assert [r["input_ids"].tolist() for r in build(s)] == [r["input_ids"].tolist() for r in rows]
        prompt = tok.decode(rows[0]["input_ids"][rows[0]["labels"] == -100])
        assert "describe the findings for the topic" in prompt
    t_rows = _family("llava_t").sample_builder(tok, "train")(samples[0])
    assert t_rows[0]["pixel_values"].shape == (1, 3, 32, 32)


def test_stages_train_projector_then_lora_projector_head(ta):
    fam, tok, _, samples = ta
    model = fam.build_model(tok)
    batch = fam.collate(tok)([r for s in samples[:2] for r in fam.sample_builder(tok, "train")(s)])
    stage1 = fam.trainable_groups(model, "projector")
    assert [g.name for g in stage1] == ["projector"]
    stage2 = fam.trainable_groups(model, "lora", TuningSpec("lora", LoraConfig(r=4, alpha=8)))
    assert [g.name for g in stage2] == ["projector", "lora", "topic_head"]
    assert stage2[1].params and all(p.shape[0] == 4 or p.shape[1] == 4 for p in stage2[1].params)  # r from options
    for p in model.parameters():  # what the trainer does: everything outside the groups is frozen
        p.requires_grad_(False)
    for g in stage2:
        for p in g.params:
            p.requires_grad_(True)
    inputs = {k: v for k, v in batch.items() if torch.is_tensor(v)}
    out = model(**inputs)
    out.loss.backward()
    assert torch.isfinite(out.loss) and model.topic_head.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.vision.parameters())  # the shared encoder stays frozen
    assert all(p.grad is not None for g in stage2 for p in g.params)


def _generate(fam, tok, model, samples, selection):
    gen = GenConfig(max_new_tokens=4, options={"selection": selection})  # the eval config alone selects
    build = fam.sample_builder(tok, "eval", gen=gen)
    batch = fam.collate(tok)([build(s)[0] for s in samples])
    return batch, fam.generate(model, tok, batch, gen)


def test_reference_topics_change_nothing_under_all_and_predicted_and_oracle_is_declared(ta):
    fam, tok, model, samples = ta
    edited = [copy.copy(s) for s in samples]
    edited[0].annotations = {"topics": {"rows": [{"topic": "disease-fracture", "sentence": "Rib fracture."}]}}
    for selection in ("all", "predicted"):
        b1, g1 = _generate(fam, tok, model, samples, selection)
        b2, g2 = _generate(fam, tok, model, edited, selection)
        assert all(torch.equal(b1[k], b2[k]) for k in b1 if torch.is_tensor(b1[k]))
        assert [(g.generated, g.extra["topics"]) for g in g1] == [(g.generated, g.extra["topics"]) for g in g2]
        assert fam.oracle_inputs(GenConfig(options={"selection": selection})) == []
    assert len(g1[0].extra["topics"]) >= 1 and all(len(g.extra["topics"]) == len(Ontology().names)
                                                  for g in _generate(fam, tok, model, samples, "all")[1])
    _, o1 = _generate(fam, tok, model, samples, "oracle")
    _, o2 = _generate(fam, tok, model, edited, "oracle")
    assert o2[0].extra["topics"] == ["disease-fracture"] and o1[0].extra["topics"] != o2[0].extra["topics"]
    assert fam.oracle_inputs(GenConfig(options={"selection": "oracle"}))


def test_segment_ablation_blanks_s_only_and_black_blanks_both(ta):
    fam, tok, _, samples = ta
    batch, _ = _generate(fam, tok, ta[2], samples[:1], "all")
    seg, black = fam.ablate(batch, "segment"), fam.ablate(batch, "black")
    black_px = fam._black(batch["global_image"][:1])
    assert torch.equal(seg["global_image"], batch["global_image"]) and not torch.equal(seg["segments"], batch["segments"])
    assert torch.equal(seg["segments"][0, 3], black_px[0]) and torch.equal(black["global_image"][0], black_px[0])
    assert torch.equal(black["segments"], seg["segments"])
    # S outside its regions is exactly the black value after normalisation (blanked before preprocessing)
    heart = Ontology().order["organ-heart"]
    assert (batch["segments"][0, heart] == black_px[0]).float().mean() > 0.5


def test_demo_config_builds_the_family_with_its_options():
    cfg = load_config("configs/llava_ta_demo.yaml", []).model
    fam = LlavaTAFamily(cfg)
    assert cfg.family == "llava_ta"
    assert fam.name == "llava_ta" and fam.opts.selection == "predicted"
    stages = load_config("configs/llava_ta_demo.yaml", []).train.resolved_stages()
    assert [(s.tuning, s.target) for s in stages][-2:] == [("projector", "topics"), ("lora", "topics")]
    with pytest.raises(Exception, match="threshold"):
        _family(threshold=1.5)


def test_eval_scores_every_selection_topic_level_and_topic_rows_through_the_contract_hooks(ta, tmp_path):
    """rrg eval's scoring half on this family: selection_{all,predicted,oracle}_<metric> in one metrics dict
    (headline = the configured selection, reused, not re-run), topic-level scores, topic rows in report.html."""
    from trainer.evaluation.eval_hooks import card_html, extra_scores
    from trainer.evaluation.evaluate import _score_variants
    from trainer.evaluation.generate import gen_config, generate_batches
    from trainer.evaluation.report_html import write_report

    fam, tok, model, samples = ta
    cfg = load_config("configs/tiny.yaml", ["eval.bootstrap=0", "eval.meteor=false", "eval.max_new_tokens=4"])
    cfg.eval.family_options = {"selection": "predicted"}
    gen = gen_config(cfg)
    variants = fam.eval_variants(gen)
    assert list(variants) == ["selection_all", "selection_predicted", "selection_oracle"]
    assert variants["selection_predicted"] is gen  # the headline run is reused
    assert fam.oracle_inputs(variants["selection_oracle"]) and not fam.oracle_inputs(variants["selection_all"])

    def run(g):
        batch = fam.collate(tok)([fam.sample_builder(tok, "eval", gen=g)(s)[0] for s in samples])
        return list(generate_batches(model, fam, tok, [batch], g))

    runs = {"model": run(gen)}
    runs.update({n: runs["model"] if v == gen else run(v) for n, v in variants.items()})
    assert all(len(r["topics"]) == len(Ontology().names) for r in runs["selection_all"])
    assert [r["topics"] for r in runs["selection_oracle"]] == \
        [[row["topic"] for row in s.annotations["topics"]["rows"]] for s in samples]
    flat = extra_scores(fam, runs["model"])
    assert 0.0 <= flat["topic_recall"] <= 1.0 and flat["per_topic"] and "topic_macro_rouge_l" in flat
    variant_metrics = _score_variants(cfg, fam, runs, "rrg", tmp_path, flat)
    for sel in ("all", "predicted", "oracle"):
        assert isinstance(flat[f"selection_{sel}_ce_macro_f1_14"], float) and f"selection_{sel}_topic_recall" in flat
        assert (tmp_path / f"predictions_selection_{sel}.jsonl").is_file()
    assert flat["selection_oracle_oracle_inputs"] and flat["selection_predicted_oracle_inputs"] == []
    assert flat["selection_all_topic_n_pairs"] == flat["topic_n_pairs"] > 0  # pairs = the reference's topics
    sample = {**runs["model"][0], "image": samples[0].images[0], "masks": samples[0].masks,
              "mask_channels": samples[0].mask_channels}
    html = write_report(tmp_path, metrics=variant_metrics["selection_predicted"], baselines={}, ablations={},
                        samples=[{**sample, "card_html": card_html(fam, sample)}],
                        variants=variant_metrics).read_text()
    assert 'class="topics"' in html and "selection_oracle" in html
    assert all(f'data-topic="{r["topic"]}"' in html for r in samples[0].annotations["topics"]["rows"])


def test_eval_family_options_threshold_overrides_the_predicted_selection_threshold(ta):
    fam, tok, model, samples = ta
    batch = fam.collate(tok)([fam.sample_builder(tok, "eval")(s)[0] for s in samples])

    def topics(threshold):
        gen = GenConfig(max_new_tokens=1, options={"selection": "predicted", "threshold": threshold})
        return [g.extra["topics"] for g in fam.generate(model, tok, batch, gen)]

    assert all(len(t) == len(Ontology().names) for t in topics(1e-6))
    assert all(len(t) == 1 for t in topics(1 - 1e-6))  # none passes: the head's top topic
    with pytest.raises(Exception, match="threshold"):
        topics(1.5)


def _loss_and_grads(model, batch):
    m = copy.deepcopy(model).train()
    out = m(**{k: v for k, v in batch.items() if torch.is_tensor(v)})
    out.loss.backward()
    return out, {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_packed_topic_rows_give_the_same_loss_and_grads(ta, impl):
    """Packing (train.packing): the topic rows of 4 studies share fewer LM rows, each row with its 2 images."""
    from modeling.packing import pack_batch
    from modeling.tokenizer import image_token_id
    from modeling.tuning import apply_tuning

    fam, tok, base, samples = ta
    model = copy.deepcopy(base)
    model.cfg.attention = impl
    apply_tuning(model, fam, TuningSpec("full", LoraConfig(), False))
    batch = fam.collate(tok)([fam.sample_builder(tok, "train")(s) for s in samples])
    n = model.vision.num_patches
    rows = batch["input_ids"].shape[0]
    lm = batch["attention_mask"].sum(1) + 2 * (n - 1)
    packed = pack_batch(batch, int(lm.sum()) // 3 + int(lm.max()), image_token_id(tok), n)
    assert 2 <= packed["input_ids"].shape[0] < rows and packed["pixel_values"].shape == batch["pixel_values"].shape
    assert sorted(zip(packed["keys"], packed["topics"])) == sorted(zip(batch["keys"], batch["topics"]))
    order = [list(zip(batch["keys"], batch["topics"])).index(kt) for kt in zip(packed["keys"], packed["topics"])]
    assert torch.equal(packed["topic_targets"], batch["topic_targets"][order])
    assert round(float(packed["sample_weight"].sum())) == len(samples)  # weights still count studies
    o0, g0 = _loss_and_grads(model, batch)
    o1, g1 = _loss_and_grads(model, packed)
    torch.testing.assert_close(o1.weight_sum, o0.weight_sum)
    torch.testing.assert_close(o1.loss, o0.loss, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys() and "topic_head.weight" in g0 and len(g0) > 10
    for name in g0:
        torch.testing.assert_close(g1[name], g0[name], atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad():  # isolation is real: rows that see each other give another loss
        leaky = dict(packed, segment_ids=(packed["segment_ids"] > 0).long())
        assert abs(float(model(**{k: v for k, v in leaky.items() if torch.is_tensor(v)}).loss) - float(o0.loss)) > 1e-4


def test_step_meter_counts_studies_not_topic_rows(ta):
    """samples_per_s counts studies: 4 studies fan out into ~24 rows weighted 1/n (packed or not)."""
    from modeling.packing import pack_batch
    from modeling.tokenizer import image_token_id
    from trainer.loop import StepMeter

    fam, tok, model, samples = ta
    build = fam.sample_builder(tok, "train")
    studies = [samples[i % 4] for i in range(16)]  # 16 studies of 6..8 rows, each row weighing 1/n
    batch = fam.collate(tok)([build(s) for s in studies])
    assert batch["input_ids"].shape[0] > 2 * len(studies)
    packed = pack_batch(batch, 256, image_token_id(tok), model.vision.num_patches)
    for b in (batch, packed):
        meter = StepMeter()
        meter.batch(b)
        meter.batch(b)
        assert meter.samples == 2 * len(studies)
        assert meter.summary(1)["samples_per_s"] > 0 and meter.tokens < meter.padded_tokens


def test_sample_builders_and_model_share_the_ontology_asset_and_its_export_copy(ta, tmp_path):
    """The shards' topic_ontology asset (not the built-in table) orders rows, S and the head, in training and
    after export; the eval rows name the topics of their S and the model refuses another ontology."""
    from modeling.family import build_family, load_pretrained
    from shards.passes.topics.ontology import TOPICS

    _, tok, _, samples = ta
    onto = Ontology(tuple(reversed(TOPICS)))  # a dataset whose asset orders topics otherwise
    fam = _family()
    model = fam.build_model(tok, {"topic_ontology": onto}).eval()
    rows = fam.sample_builder(tok, "train")(samples[0])
    assert [r["topic"] for r in rows] == [r["topic"] for r in onto.sort(samples[0].annotations["topics"]["rows"])]
    assert rows[0]["topic_targets"][onto.order[rows[0]["topic"]]] == 1.0 and model.onto.names == onto.names
    gen = GenConfig(max_new_tokens=2, options={"selection": "all"})
    batch = fam.collate(tok)([fam.sample_builder(tok, "eval", gen=gen)(s)[0] for s in samples[:2]])
    assert batch["segment_topics"] == onto.names
    fam.generate(model, tok, batch, gen)
    with pytest.raises(ValueError, match="ontology"):  # S built from the built-in order
        other = _family().sample_builder(tok, "eval", gen=gen)
        fam.generate(model, tok, fam.collate(tok)([other(s)[0] for s in samples[:2]]), gen)
    fam.save_pretrained(model, str(tmp_path / "export"))
    loaded = load_pretrained(str(tmp_path / "export"))
    fresh = build_family(loaded.cfg)  # what rrg eval does: a family from the export's config
    assert loaded.onto.names == fresh.ontology().names == onto.names
    ebatch = fresh.collate(tok)([fresh.sample_builder(loaded.tokenizer, "eval", gen=gen)(s)[0] for s in samples[:2]])
    assert ebatch["segment_topics"] == onto.names
