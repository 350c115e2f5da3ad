"""NLG metrics against pycocoevalcap 1.2 run live (its Java PTBTokenizer and METEOR jar).

CI has java; without it these tests fail with a clear message rather than skip.
"""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from trainer.evaluation import nlg
from trainer.evaluation.ptb import tokenize

PAIRS = [
    ("Heart size is normal. No pleural effusion or pneumothorax.", "The heart size is normal. There is no pleural effusion or pneumothorax."),
    ("FINDINGS: The lungs are clear. The cardiomediastinal silhouette is within normal limits. IMPRESSION: No acute cardiopulmonary process.", "Lungs are clear. No acute cardiopulmonary abnormality."),
    ("Stable mild cardiomegaly. Small bilateral pleural effusions, left greater than right.", "Mild cardiomegaly, stable. Small left pleural effusion."),
    ("A 5 mm nodule in the right upper lobe (RUL) is unchanged since 01/02/2012.", "There is a 5-mm nodule in the right upper lobe, unchanged."),
    ("Right IJ central venous catheter tip in the SVC. ET tube 4.5cm above the carina.", "Endotracheal tube terminates 4 cm above the carina; right internal jugular line ends in the SVC."),
    ("Left-sided PICC line terminates at the cavo-atrial junction.", "Left PICC tip at the cavoatrial junction."),
    ("The patient's heart isn't enlarged. Lungs don't show consolidation.", "Heart is not enlarged. No consolidation."),
    ("Mild pulmonary vascular congestion -- possibly early edema... Clinical correlation recommended!", "Mild vascular congestion without frank edema."),
    ("T5/T6 compression fracture, s/p CABG with intact sternotomy wires.", "Status post CABG. Sternotomy wires are intact. Old T6 compression deformity."),
    ("There is a 3.5 x 2.1 cm mass in the left lower lobe, concerning for malignancy.", "Left lower lobe mass measuring 3.5 cm."),
    ("Compared to prior study dated ___, no significant change.", "No change compared to the prior study."),
    ("PA and lateral views of the chest were obtained. The lungs are hyperinflated, consistent with COPD.", "Hyperinflated lungs c/w emphysema."),
    ("Patchy opacity at the left base may represent atelectasis versus pneumonia.", "Left basilar opacity, likely atelectasis; pneumonia not excluded."),
    ("No focal consolidation, effusion, or pneumothorax. Cardiac silhouette is normal (unchanged).", "No focal consolidation."),
    ("Moderate right pneumothorax with 2 cm apical pleural separation. Chest tube recommended.", "Large right-sided pneumothorax."),
    ("Interval placement of a nasogastric tube, which courses below the diaphragm and out of view.", "NG tube tip below the diaphragm."),
    ("Dual-chamber pacemaker with leads in the right atrium and right ventricle.", "Pacemaker leads in the RA and RV, unchanged."),
    ("Old healed left rib fractures (5th-7th ribs).", "Healed left-sided rib fractures."),
    ("IMPRESSION:  1. No acute cardiopulmonary process.  2. Stable mild cardiomegaly.", "1. No acute process. 2. Mild cardiomegaly."),
    ("Lungs are clear without focal consolidation; no evidence of pulmonary edema.", "Clear lungs."),
    ("Low lung volumes with bibasilar atelectasis. Heart size is difficult to assess.", "Low lung volumes. Bibasilar opacities, likely atelectasis."),
    ("Elevated right hemidiaphragm, unchanged. Otherwise, no acute findings.", "No acute findings."),
    ("Diffuse interstitial opacities, which could represent edema or atypical infection.", "Bilateral interstitial opacities - edema vs. infection."),
    ("Small left apical pneumothorax (~5 mm) is new since 10:30 a.m. today.", "Tiny left apical pneumothorax, new."),
    ("Degenerative changes of the thoracic spine. Mild S-shaped scoliosis.", "Thoracic spine degenerative changes."),
    ("Calcified granuloma in the left mid lung; no suspicious nodules or masses.", "Calcified granuloma, left lung."),
    ("Aortic knob calcifications. Tortuous aorta. No mediastinal widening.", "Calcified, tortuous aorta."),
    ("The heart is mildly enlarged; there is no pulmonary vascular congestion.", "Mild cardiomegaly without congestion."),
    ("Right lower lobe consolidation, concerning for pneumonia in the appropriate clinical setting.", "RLL pneumonia."),
    ("Bilateral pleural effusions with adjacent compressive atelectasis, increased from prior exam.", "Increased bilateral effusions with atelectasis."),
    ("No radiographic evidence of acute cardiopulmonary disease.", "Normal chest radiograph."),
    ("Enlarged cardiomediastinal silhouette, likely due to AP technique and low lung volumes.", "Cardiomediastinal silhouette appears enlarged, probably technical."),
    ("Surgical clips in the right upper quadrant. Cholecystectomy clips noted.", "Post-surgical clips in the RUQ."),
    ("Tracheostomy tube in place. Lungs: clear. Heart: normal size.", "Trach tube in standard position. Clear lungs."),
    ("Blunting of the right costophrenic angle suggests a small effusion or pleural thickening.", "Right costophrenic angle blunting."),
    ("Apical pleural thickening and scarring bilaterally, stable since 2015.", "Bilateral apical scarring."),
    ("Multifocal airspace disease in both lungs, worse on the left (~50% of the lung).", "Multifocal pneumonia, left worse than right."),
    ("Hilar congestion & cephalization of vessels, c/w CHF exacerbation.", "Congestive heart failure with pulmonary edema."),
    ("ET tube is 2 cm above the carina; recommend withdrawal by 1-2 cm.", "Endotracheal tube is low, 2cm above carina."),
    ("Left subclavian port-a-cath with tip in the mid SVC.", "Left chest port with catheter tip in the SVC."),
    ("No pneumothorax following left thoracentesis. Small residual effusion.", "No pneumothorax after thoracentesis."),
    ("Severe cardiomegaly, unchanged. Prosthetic mitral valve.", "Marked cardiomegaly. Mitral valve replacement."),
    ("Nodular opacity in the right lung base; CT recommended for further evaluation.", "Right basilar nodule. Recommend CT."),
    ("Linear atelectasis at the left lung base. No effusion.", "Left basilar linear atelectasis."),
    ("Widened mediastinum, concerning for aortic injury in the setting of trauma.", "Mediastinal widening."),
    ("Acute displaced fracture of the right clavicle.", "Right clavicle fracture."),
    ("Lungs are well expanded and clear. Hila are unremarkable. No bony abnormality.", "Normal lungs."),
    ("Retrocardiac opacity, which may reflect atelectasis, aspiration, or pneumonia.", "Retrocardiac atelectasis."),
    ("Unchanged position of the Swan-Ganz catheter, tip in the right pulmonary artery.", "Swan Ganz catheter in right PA."),
    ("Heart size top-normal. Mild pulmonary edema has improved.", "Improving edema."),
    ("Free air under the right hemidiaphragm!! Findings were discussed with Dr. Smith at 3 p.m.", "Pneumoperitoneum."),
    ("Bibasilar opacities are likely atelectasis; infection can't be excluded.", "Bibasilar atelectasis."),
    ("There is no focal airspace consolidation [see prior CT]. Emphysema {severe}.", "Emphysema, no consolidation."),
    ("Interval removal of the right chest tube. No pneumothorax.", "Chest tube removed; no pneumothorax."),
    ("None.", "No acute cardiopulmonary process."),
    ("No acute cardiopulmonary process.", "."),
    ("Lungs clear.", "no"),
    ("Mild bibasilar atelectasis.", "Mild bibasilar atelectasis."),
    ("Sternotomy wires and mediastinal clips; e.g. prior CABG. Heart size, i.e. cardiac silhouette, is normal.", "Prior CABG. Normal heart size."),
    ("Multiple bilateral pulmonary nodules measuring up to 1.2cm, consistent with metastases.", "Bilateral pulmonary metastases up to 12 mm."),
]


def _require_java():
    if shutil.which("java") is None:
        pytest.fail("java not found on PATH: the reference toolkit (PTBTokenizer, METEOR) needs Java 8+")


@pytest.fixture(scope="module")
def reference():
    """pycocoevalcap's own pipeline: PTBTokenizer, then each scorer."""
    _require_java()
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({i: [{"caption": r}] for i, (r, _) in enumerate(PAIRS)})
    res = tok.tokenize({i: [{"caption": h}] for i, (_, h) in enumerate(PAIRS)})
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, rouge_per = Rouge().compute_score(gts, res)
    cider, cider_per = Cider().compute_score(gts, res)
    return dict(gts=gts, res=res, bleu=bleu, rouge=rouge, rouge_per=rouge_per, cider=cider, cider_per=cider_per)


def _mine():
    refs = [[tokenize(r)] for r, _ in PAIRS]
    hyps = [tokenize(h) for _, h in PAIRS]
    return refs, hyps


def test_pairs_are_many_and_varied():
    assert len(PAIRS) >= 50
    text = " ".join(r + " " + h for r, h in PAIRS)
    for feature in ["(", "'s", "n't", "5 mm", "-", ";", "...", "/", "%", "[", "."]:
        assert feature in text


def test_tokenizer_matches_java_ptbtokenizer(reference):
    for i, (r, h) in enumerate(PAIRS):
        assert tokenize(r) == reference["gts"][i][0], r
        assert tokenize(h) == reference["res"][i][0], h


def test_tokenizer_quirks():
    # brackets survive because the toolkit lower-cases before filtering "-LRB-"
    assert tokenize("Nodule (RUL).") == "nodule -lrb- rul -rrb-"
    assert tokenize("ET tube 4.5cm above; 5mm nodule, 50%.") == "et tube 4.5 cm above 5mm nodule 50 %"
    assert tokenize("The patient's heart isn't enlarged -- cannot exclude...") == \
        "the patient 's heart is n't enlarged can not exclude"
    assert tokenize("Seen on CT. vs. prior, e.g. No. 5") == "seen on ct. vs. prior e.g. no. 5"


def test_bleu_rouge_cider_equal_reference(reference):
    refs, hyps = _mine()
    for mine, ref in zip(nlg.bleu(refs, hyps), reference["bleu"]):
        assert mine == pytest.approx(ref, abs=1e-4)
    rouge = nlg.rouge_l(refs, hyps)
    assert sum(rouge) / len(rouge) == pytest.approx(reference["rouge"], abs=1e-4)
    assert rouge == pytest.approx(list(reference["rouge_per"]), abs=1e-4)
    cider = nlg.cider_d(refs, hyps)
    assert sum(cider) / len(cider) == pytest.approx(reference["cider"], abs=1e-4)
    assert cider == pytest.approx(list(reference["cider_per"]), abs=1e-4)
    assert 0 < reference["bleu"][3] < reference["bleu"][0] < 1 and reference["cider"] > 0.5


def test_resampled_bleu_and_cider_equal_toolkit_on_the_resample(reference):
    """A bootstrap resample scored by the toolkit (duplicates as distinct images) equals ours."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider

    index = [3, 3, 7, 0, 12, 12, 12, 40, 55, 54, 21, 9, 9, 30]
    gts = {j: reference["gts"][i] for j, i in enumerate(index)}
    res = {j: reference["res"][i] for j, i in enumerate(index)}
    refs, hyps = _mine()
    stats = [nlg.bleu_stats(r, h) for r, h in zip(refs, hyps)]
    want_bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    assert nlg.bleu_from_stats([stats[i] for i in index]) == pytest.approx(want_bleu, abs=1e-4)
    want_cider, _ = Cider().compute_score(gts, res)
    got = nlg.cider_d(refs, hyps, index=index)
    assert sum(got) / len(got) == pytest.approx(want_cider, abs=1e-4)


def test_meteor_equals_toolkit(reference):
    from pycocoevalcap.meteor.meteor import Meteor

    want, want_per = Meteor().compute_score(reference["gts"], reference["res"])
    refs, hyps = _mine()
    scorer = nlg.MeteorScorer()
    try:
        got, per = scorer.score(refs, hyps)
        stats = scorer.stats(refs, hyps)
        sub, _ = scorer.aggregate([stats[i] for i in (1, 1, 2)])
        # the bootstrap's pipelined path: every resample's answer is the one-at-a-time answer, exactly
        rng = np.random.default_rng(3)
        resamples = [rng.integers(0, len(stats), len(stats)) for _ in range(40)]
        piped = scorer.resample_scores(stats, resamples)
        one_by_one = [scorer.aggregate([stats[i] for i in ix])[0] for ix in resamples]
    finally:
        scorer.close()
    assert got == pytest.approx(want, abs=1e-6) and 0.05 < got < 0.6
    assert per == pytest.approx(list(want_per), abs=1e-6)
    assert 0 <= sub <= 1 and sub != pytest.approx(got)
    assert piped == one_by_one and len(set(piped)) > 1


def test_nlg_scores_perfect_and_keys():
    _require_java()
    refs = [r for r, _ in PAIRS[:8]]
    out = nlg.nlg_scores(refs, refs, meteor=False)
    assert out["bleu_4"] == pytest.approx(1.0, abs=1e-6) and out["rouge_l"] == pytest.approx(1.0)
    assert out["meteor_status"] == "not computed: disabled" and "meteor" not in out


def test_meteor_reports_missing_java(tmp_path):
    """With no java on PATH there is no METEOR value, only the plain message."""
    code = (
        "import json\n"
        "from trainer.evaluation import nlg\n"
        "try:\n    nlg.MeteorScorer()\nexcept RuntimeError as e:\n    msg = str(e)\n"
        "out = nlg.nlg_scores(['heart size is normal.'], ['normal heart size.'])\n"
        "print(json.dumps({'msg': msg, 'out': out}))\n"
    )
    env = dict(os.environ, PATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))), timeout=120)
    assert proc.returncode == 0, proc.stderr
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got["msg"] == "METEOR: not computed (java not found)"
    assert got["out"]["meteor_status"] == "not computed: java not found" and "meteor" not in got["out"]
    assert 0 < got["out"]["bleu_1"] <= 1
