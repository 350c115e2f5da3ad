"""Topic decomposition (LLaVA-TA): the rule-based backend's exact outputs on real-style sentences."""
from __future__ import annotations

import pytest

from shards.passes.topics.ontology import BY_NAME, ORDER, TOPICS, Ontology
from shards.passes.topics.decompose import decompose, join_topics

# (report text, exact rows) -- negation, lists, devices, comparisons and speculation that must be
# dropped, multi-finding sentences, section headers and impression duplicates
CORPUS = [
    ('No pleural effusion or pneumothorax.',
     [('disease-pleural_effusion', 'Pleural effusion is absent.'), ('disease-pneumothorax', 'Pneumothorax is absent.')]),
    ('No focal consolidation, pleural effusion, or pneumothorax.',
     [('disease-consolidation', 'Consolidation is absent.'), ('disease-pleural_effusion', 'Pleural effusion is absent.'), ('disease-pneumothorax', 'Pneumothorax is absent.')]),
    ('Heart size and mediastinal contours are normal.',
     [('organ-heart', 'Heart size and mediastinal contours are normal.')]),
    ('The lungs are clear without consolidation or effusion.',
     [('organ-lungs', 'The lungs are clear.'), ('disease-consolidation', 'Consolidation is absent.'), ('disease-pleural_effusion', 'Pleural effusion is absent.')]),
    ('There is a small right pleural effusion without pneumothorax.',
     [('disease-pleural_effusion', 'There is a small right pleural effusion.'), ('disease-pneumothorax', 'Pneumothorax is absent.')]),
    ('Compared to the prior radiograph, there is a new left lower lobe consolidation.',
     [('disease-consolidation', 'There is a left lower lobe consolidation.')]),
    ('No significant change since the prior study.',
     []),
    ('Heart size is unchanged.',
     []),
    ('Possible small left apical pneumothorax.',
     []),
    ('Right lower lobe consolidation, concerning for pneumonia.',
     [('disease-consolidation', 'Right lower lobe consolidation.')]),
    ('Hazy bilateral perihilar opacities may represent mild pulmonary edema.',
     [('disease-lung_opacity', 'Hazy bilateral perihilar opacities.')]),
    ('Bilateral perihilar hazy opacities consistent with mild pulmonary edema.',
     [('disease-edema', 'Bilateral perihilar hazy opacities consistent with mild pulmonary edema.')]),
    ('Small left pleural effusion and left basilar atelectasis.',
     [('disease-atelectasis', 'Left basilar atelectasis.'), ('disease-pleural_effusion', 'Small left pleural effusion.')]),
    ('Endotracheal tube terminates 4.5 cm above the carina.',
     [('aux-support_devices', 'Endotracheal tube terminates 4.5 cm above the carina.')]),
    ('Right internal jugular central venous catheter tip in the SVC, no pneumothorax.',
     [('aux-support_devices', 'Right internal jugular central venous catheter tip in the SVC.'), ('disease-pneumothorax', 'Pneumothorax is absent.')]),
    ('Nasogastric tube tip is in the stomach.',
     [('aux-support_devices', 'Nasogastric tube tip is in the stomach.')]),
    ('No acute osseous abnormality.',
     [('organ-bones', 'No acute osseous abnormality.')]),
    ('No displaced rib fracture.',
     [('disease-fracture', 'Fracture is absent.')]),
    ('No acute cardiopulmonary process.',
     [('aux-impression', 'No acute cardiopulmonary process.')]),
    ('Pneumonia cannot be excluded.',
     []),
    ('Clinical correlation is recommended.',
     []),
    ('Interval increase in the size of the right pleural effusion.',
     [('disease-pleural_effusion', 'Right pleural effusion.')]),
    ('Mild pulmonary edema has improved since the prior study.',
     [('disease-edema', 'Mild pulmonary edema.')]),
    ('Cardiac monitoring leads overlie the chest.',
     [('aux-support_devices', 'Cardiac monitoring leads overlie the chest.')]),
    ('The cardiomediastinal silhouette is within normal limits.',
     [('organ-heart', 'The cardiomediastinal silhouette is within normal limits.')]),
    ('There is no free air under the diaphragm.',
     [('organ-diaphragm', 'There is no free air under the diaphragm.')]),
    ('Pneumothorax has resolved.',
     [('disease-pneumothorax', 'Pneumothorax is absent.')]),
    ('Lungs are well expanded and clear.',
     [('organ-lungs', 'Lungs are well expanded and clear.')]),
    ('Small bilateral pleural effusions, left greater than right.',
     [('disease-pleural_effusion', 'Small bilateral pleural effusions, left greater than right.')]),
    ('There is mild pulmonary vascular congestion and small bilateral pleural effusions.',
     [('disease-edema', 'There is mild pulmonary vascular congestion.'), ('disease-pleural_effusion', 'Small bilateral pleural effusions.')]),
    ('Linear opacity at the left base, likely atelectasis.',
     [('disease-lung_opacity', 'Linear opacity at the left base.')]),
    ('A 1.5 cm nodule in the right upper lobe.',
     [('disease-lung_lesion', 'A 1.5 cm nodule in the right upper lobe.')]),
    ('Left PICC terminates in the mid SVC.',
     [('aux-support_devices', 'Left PICC terminates in the mid SVC.')]),
    ('No evidence of pneumothorax.',
     [('disease-pneumothorax', 'Pneumothorax is absent.')]),
    ('Heart size is normal, and there is no pleural effusion.',
     [('organ-heart', 'Heart size is normal.'), ('disease-pleural_effusion', 'Pleural effusion is absent.')]),
    ('Blunting of the left costophrenic angle.',
     [('disease-pleural_effusion', 'Blunting of the left costophrenic angle.')]),
    ('Stable position of the endotracheal tube.',
     [('aux-support_devices', 'Position of the endotracheal tube.')]),
    ('Median sternotomy wires are intact.',
     [('aux-support_devices', 'Median sternotomy wires are intact.')]),
    ('Moderate cardiomegaly. The mediastinal contours are normal.',
     [('disease-cardiomegaly', 'Moderate cardiomegaly.'), ('organ-mediastinum', 'The mediastinal contours are normal.')]),
    # a topic named twice keeps both statements, merged in report order (nothing is dropped)
    ('FINDINGS: The heart is mildly enlarged. No pneumothorax. IMPRESSION: Mild cardiomegaly.',
     [('disease-cardiomegaly', 'The heart is mildly enlarged. Mild cardiomegaly.'), ('disease-pneumothorax', 'Pneumothorax is absent.')]),
    ('Right pleural effusion. No left pleural effusion.',
     [('disease-pleural_effusion', 'Right pleural effusion. No left pleural effusion.')]),
    ('Mild cardiomegaly. IMPRESSION: Mild cardiomegaly.',
     [('disease-cardiomegaly', 'Mild cardiomegaly.')]),
    ('No pneumothorax. Pneumothorax has resolved.',
     [('disease-pneumothorax', 'Pneumothorax is absent.')]),
    ('Small right apical pneumothorax. No pleural effusion or pneumothorax.',
     [('disease-pleural_effusion', 'Pleural effusion is absent.'), ('disease-pneumothorax', 'Small right apical pneumothorax.')]),
    # no topic's keywords: the ontology's fallback topic; cross-references carry nothing and are dropped
    ('The patient is rotated to the left.',
     [('aux-other', 'The patient is rotated to the left.')]),
    ('Thyroid goiter is noted. Calcified granuloma in the left upper lobe.',
     [('organ-lungs', 'Calcified granuloma in the left upper lobe.'), ('aux-other', 'Thyroid goiter is noted.')]),
    ('Small right pneumothorax. IMPRESSION: Findings as above.',
     [('disease-pneumothorax', 'Small right pneumothorax.')]),
]


@pytest.mark.parametrize("report,rows", CORPUS, ids=[c[0][:40] for c in CORPUS])
def test_rule_decomposer_exact_rows(report, rows):
    got, _ = decompose(report)
    assert [(r["topic"], r["sentence"]) for r in got] == rows


def test_corpus_is_varied_and_counts_what_it_drops():
    assert len(CORPUS) >= 30
    rows, counts = decompose("No significant change since the prior study. Possible small left apical pneumothorax. "
                             "Findings as above. No pneumothorax. Pneumothorax has resolved. The patient is rotated. "
                             "Small left effusion. IMPRESSION: Left pleural effusion. No effusion or pneumothorax.")
    assert counts == {"sentences": 9, "comparison": 1, "speculation": 1, "cross_reference": 1, "other": 1,
                      "repeated": 2, "merged": 1, "conflict": 1}
    assert [(r["topic"], r["sentence"]) for r in rows] == [
        ("disease-pleural_effusion", "Small left effusion. Left pleural effusion."),
        ("disease-pneumothorax", "Pneumothorax is absent."), ("aux-other", "The patient is rotated.")]


def test_every_kept_statement_lands_in_exactly_one_topic_row():
    """Each sentence that survives cleaning is in the rows, merged or standardised, never silently lost."""
    from shards.demo import make_study
    from shards.passes.topics.decompose import DROPPED, clean_sentence, split_sentences

    for i in range(60):
        report = make_study(i, image_size=32, two_view_fraction=0.0).report
        rows, counts = decompose(report)
        kept = [c for c in (clean_sentence(s)[0] for s in split_sentences(report)) if c]
        assert counts["sentences"] == len(kept) + sum(counts[k] for k in DROPPED), report
        assert len({r["topic"] for r in rows}) == len(rows) and "unassigned" not in counts
        text = " ".join(r["sentence"] for r in rows)
        for sentence in kept:  # a positive statement is there in its own words (negatives are standardised)
            if not any(w in sentence.lower() for w in ("no ", "not ", "without", "absent", "resolved", "clear", "normal")):
                assert sentence.rstrip(".").split(",")[0] in text, (sentence, rows)


def test_rows_follow_ontology_order_and_join():
    rows, _ = decompose("No pneumothorax. Mild cardiomegaly. Endotracheal tube terminates 4 cm above the carina.")
    assert [r["topic"] for r in rows] == ["aux-support_devices", "disease-cardiomegaly", "disease-pneumothorax"]
    assert join_topics(list(reversed(rows))) == ("Endotracheal tube terminates 4 cm above the carina. "
                                                 "Mild cardiomegaly. Pneumothorax is absent.")


def test_ontology_regions_and_roundtrip():
    onto = Ontology()
    assert {r for t in TOPICS for r in t.regions} == {"lungs", "heart", "mediastinum", "diaphragm", "ribs",
                                                        "vertebrae", "abdomen"}
    assert {t.kind for t in TOPICS} == {"pathology", "anatomy", "auxiliary"}
    assert onto.channels("disease-pleural_effusion") == ["left_lung", "right_lung", "diaphragm"]
    assert Ontology.from_json(onto.to_json()).to_json() == onto.to_json()
    assert list(ORDER) == onto.names and BY_NAME["disease-pneumothorax"].absent_sentence() == "Pneumothorax is absent."
    assert onto.fallback == "aux-other" and set(BY_NAME["aux-other"].regions) == set(onto.region_channels)
    assert Ontology.from_json(onto.to_json()).fallback == "aux-other"


def test_topic_scores_pair_reference_topics_with_generated_ones():
    from trainer.evaluation.topic_scoring import topic_scores

    ref = "Moderate cardiomegaly. There is a small right pleural effusion without pneumothorax."
    perfect = [{"topic": t, "sentence": s} for t, s in [(r["topic"], r["sentence"]) for r in decompose(ref)[0]]]
    wrong = [{"topic": "disease-cardiomegaly", "sentence": "Cardiomegaly is absent."}]
    good = topic_scores([{"id": "a", "reference": ref, "topic_rows": perfect}])
    bad = topic_scores([{"id": "a", "reference": ref, "topic_rows": wrong}])
    assert good["topic_recall"] == 1.0 and good["topic_macro_rouge_l"] == pytest.approx(1.0)
    assert good["topic_reference_decomposer"] == "rule"  # in metrics.json whatever backend made the overlay
    assert good["per_topic"]["disease-cardiomegaly"]["label_f1"] == 1.0
    assert bad["topic_recall"] == pytest.approx(1 / 3) and bad["per_topic"]["disease-cardiomegaly"]["label_f1"] == 0.0
    assert bad["per_topic"]["disease-pneumothorax"]["rouge_l"] == 0.0
    assert set(good["per_topic"]) == {"disease-cardiomegaly", "disease-pleural_effusion", "disease-pneumothorax"}


def test_topic_rows_html_shows_topic_region_overlay_and_both_sentences():
    from shards.demo import make_study
    from trainer.evaluation.topic_html import topic_rows_html

    s = make_study(5, image_size=64, two_view_fraction=0.0)
    ref_topics = [r["topic"] for r in decompose(s.report)[0]]
    extra = next(t for t in ORDER if t not in ref_topics)
    gen = [{"topic": extra, "sentence": "Rib fracture <left>."}]
    html = topic_rows_html({"reference": s.report, "topic_rows": gen, "image": s.views[0].image, "masks": s.masks,
                            "mask_channels": s.mask_channels})
    assert html.count("<tr data-topic=") == len(ref_topics) + 1 == html.count("data:image/png;base64,")
    assert "Rib fracture &lt;left&gt;." in html and "(not in reference)" in html and "(not generated)" in html
