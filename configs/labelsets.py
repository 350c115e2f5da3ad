"""Clinical label vocabularies: which findings a dataset's labels, labelers and CE scores use.

A label set is a name, an ordered label list (the column order of every labeler and CSV)
and the subset most papers report ("headline").  Values everywhere are 1.0 positive,
0.0 negative, -1.0 uncertain, None (blank) not mentioned.

* ``chexpert`` - the 14 CheXpert observations (MIMIC-CXR, CheXpert Plus, IU X-ray).
* ``padchest`` - PadChest's main findings, grouped as the Spanish labeler reports them;
  :data:`PADCHEST_RAW_TO_MAIN` maps PadChest's own ``Labels`` terms onto the group names.
"""
from __future__ import annotations

from dataclasses import dataclass

from configs.schema import Registry

CHEXPERT_LABELS = [
    "No Finding",
    "Enlarged Cardiomediastinum",
    "Cardiomegaly",
    "Lung Lesion",
    "Lung Opacity",
    "Edema",
    "Consolidation",
    "Pneumonia",
    "Atelectasis",
    "Pneumothorax",
    "Pleural Effusion",
    "Pleural Other",
    "Fracture",
    "Support Devices",
]
# The usual 5-label subset of clinical-efficacy scores.
CHEXPERT_5 = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]

PADCHEST_LABELS = [
    "normal",
    "cardiomegaly",
    "pleural effusion",
    "pneumothorax",
    "atelectasis",
    "consolidation",  # consolidation / infiltrates
    "pneumonia",
    "nodule",  # nodule / mass
    "fracture",
    "pulmonary edema",  # edema / heart insufficiency
    "support devices",
]
PADCHEST_HEADLINE = ["cardiomegaly", "pleural effusion", "atelectasis", "consolidation", "pulmonary edema"]

# PadChest ``Labels`` column terms -> main label (terms not listed belong to no main label).
PADCHEST_RAW_TO_MAIN = {
    "normal": "normal",
    "cardiomegaly": "cardiomegaly",
    "pleural effusion": "pleural effusion",
    "loculated pleural effusion": "pleural effusion",
    "costophrenic angle blunting": "pleural effusion",
    "pneumothorax": "pneumothorax",
    "atelectasis": "atelectasis",
    "laminar atelectasis": "atelectasis",
    "lobar atelectasis": "atelectasis",
    "segmental atelectasis": "atelectasis",
    "total atelectasis": "atelectasis",
    "consolidation": "consolidation",
    "infiltrates": "consolidation",
    "alveolar pattern": "consolidation",
    "interstitial pattern": "consolidation",
    "pneumonia": "pneumonia",
    "nodule": "nodule",
    "multiple nodules": "nodule",
    "pulmonary mass": "nodule",
    "mass": "nodule",
    "fracture": "fracture",
    "rib fracture": "fracture",
    "clavicle fracture": "fracture",
    "vertebral fracture": "fracture",
    "humeral fracture": "fracture",
    "pulmonary edema": "pulmonary edema",
    "heart insufficiency": "pulmonary edema",
    "pacemaker": "support devices",
    "NSG tube": "support devices",
    "endotracheal tube": "support devices",
    "central venous catheter": "support devices",
    "central venous catheter via jugular vein": "support devices",
    "central venous catheter via subclavian vein": "support devices",
    "chest drain tube": "support devices",
    "dual chamber device": "support devices",
    "single chamber device": "support devices",
    "electrical device": "support devices",
    "tracheostomy tube": "support devices",
}


@dataclass(frozen=True)
class LabelSet:
    name: str
    labels: tuple[str, ...]
    headline: tuple[str, ...]  # the subset reported as "_5" keys
    normal: str | None = None  # the label that means "nothing abnormal" (excluded from per-finding stats)


LABEL_SETS: Registry[LabelSet] = Registry("label set")
LABEL_SETS.register("chexpert")(LabelSet("chexpert", tuple(CHEXPERT_LABELS), tuple(CHEXPERT_5), "No Finding"))
LABEL_SETS.register("padchest")(LabelSet("padchest", tuple(PADCHEST_LABELS), tuple(PADCHEST_HEADLINE), "normal"))


def get_label_set(name: str, key: str = "label_set") -> LabelSet:
    return LABEL_SETS.get(name, key)
