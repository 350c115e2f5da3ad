"""PadChest, CheXpert Plus, IU X-ray and R2Gen fixture trees in their official layouts (see fixture_trees.py)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tests.fixture_trees import corrupt, write_csv, write_jpeg, write_png
from shards.records import CHEXPERT_LABELS

PADCHEST_COLUMNS = ["", "ImageID", "ImageDir", "StudyDate_DICOM", "StudyID", "PatientID", "PatientBirth",
                    "PatientSex_DICOM", "ViewPosition_DICOM", "Projection", "MethodProjection", "Pediatric",
                    "Modality_DICOM", "Manufacturer_DICOM", "PhotometricInterpretation_DICOM",
                    "PixelRepresentation_DICOM", "PixelAspectRatio_DICOM", "SpatialResolution_DICOM",
                    "BitsStored_DICOM", "WindowCenter_DICOM", "WindowWidth_DICOM", "Rows_DICOM", "Columns_DICOM",
                    "XRayTubeCurrent_DICOM", "Exposure_DICOM", "ExposureInuAs_DICOM", "ExposureTime",
                    "RelativeXRayExposure_DICOM", "ReportID", "Report", "MethodLabel", "Labels", "Localizations",
                    "LabelsLocalizationsBySentence", "labelCUIS", "LocalizationsCUIS"]
SPANISH = ["cardiomegalia. derrame pleural izquierdo pequeño.", "sin hallazgos patológicos significativos.",
           "marcapasos bicameral. sonda nasogástrica.", "atelectasia laminar en base derecha.",
           "nódulo pulmonar en lóbulo superior izquierdo.", "no se observan alteraciones.",
           "aumento del índice cardiotorácico.", "pinzamiento del seno costofrénico derecho."]
SPANISH_LABELS = [["cardiomegaly", " pleural effusion"], ["normal"], ["pacemaker", "NSG tube"],
                  ["laminar atelectasis"], ["nodule"], ["normal"], ["cardiomegaly"], ["costophrenic angle blunting"]]


def make_padchest(root: str | os.PathLike, malformed: bool = False, extra: int = 0, size: int = 48) -> Path:
    """PadChest layout; StudyID sN / PatientID pat_X (kept unless said):

    s1 pat_A PA (16-bit) + L (8-bit); labels cardiomegaly + pleural effusion
    s2 pat_A AP_horizontal (8-bit) -> AP; normal     | s3 pat_B L only -> no_frontal
    s4 pat_B PA missing on disk -> missing_image     | s5 pat_C PA in known_unreadable + AP -> AP only
    s6 pat_C PA corrupt PNG -> unreadable_image      | s7 pat_D PA row duplicated -> row_duplicate; support devices
    s8 pat_D empty Report -> empty_report            | s9 pat_E Labels NaN -> no_labels
    s10 pat_F PA + corrupt L -> PA only (view_unreadable_image, found by the shard task)
    s11 pat_F corrupt PA + L -> unreadable_image (a lateral never becomes view 0)
    s12 pat_G PA, L, COSTAL, AP -> PA, AP (L: view_over_max_views, COSTAL: view_other_position)
    ``extra`` more clean studies e1.. (patients pat_e1..) with Spanish reports; ``malformed`` adds an
    unterminated Labels literal.  The known unreadable id is ``s5_pa.png``, listed in
    ``known_unreadable.txt`` (a file of the user's: the download has none).
    """
    root = Path(root)
    rows = []

    def add(study, patient, image, proj, report, labels, bits=8, present=True, folder="0"):
        if present:
            write_png(root / folder / image, size, size - 8, seed=len(rows), bits=bits)
        lab = repr(labels) if isinstance(labels, list) else labels
        rows.append([len(rows), image, folder, "20150101", study, patient, "1950", "M", "POSTEROANTERIOR", proj,
                     "Manual review of DICOM fields", "No", "CR", "PhilipsMedicalSystems", "MONOCHROME2", "0",
                     "[0.1, 0.1]", "0.1", "12" if bits == 16 else "8", "2048", "4096", size, size - 8, "", "", "",
                     "", "", len(rows), report, "Physician", lab, "['loc left']",
                     repr([[t.strip(), "loc left"] for t in labels]) if isinstance(labels, list) else "[]",
                     "['C0018800']", "['C0443246']"])

    add("s1", "pat_A", "s1_pa.png", "PA", SPANISH[0], SPANISH_LABELS[0], bits=16)
    add("s1", "pat_A", "s1_l.png", "L", SPANISH[0], SPANISH_LABELS[0], folder="1")
    add("s2", "pat_A", "s2_ap.png", "AP_horizontal", SPANISH[1], SPANISH_LABELS[1])
    add("s3", "pat_B", "s3_l.png", "L", SPANISH[5], ["normal"])
    add("s4", "pat_B", "s4_pa.png", "PA", SPANISH[5], ["normal"], present=False)
    add("s5", "pat_C", "s5_pa.png", "PA", SPANISH[3], SPANISH_LABELS[3])
    add("s5", "pat_C", "s5_ap.png", "AP", SPANISH[3], SPANISH_LABELS[3], bits=16)
    add("s6", "pat_C", "s6_pa.png", "PA", SPANISH[4], SPANISH_LABELS[4], present=False)
    corrupt(root / "0" / "s6_pa.png")
    add("s7", "pat_D", "s7_pa.png", "PA", SPANISH[2], SPANISH_LABELS[2])
    rows.append(list(rows[-1]))
    add("s8", "pat_D", "s8_pa.png", "PA", "", ["normal"])
    add("s9", "pat_E", "s9_pa.png", "PA", SPANISH[6], "nan")
    add("s10", "pat_F", "s10_pa.png", "PA", SPANISH[7], SPANISH_LABELS[7], bits=16)
    add("s10", "pat_F", "s10_l.png", "L", SPANISH[7], SPANISH_LABELS[7], present=False)
    corrupt(root / "0" / "s10_l.png")
    add("s11", "pat_F", "s11_pa.png", "PA", SPANISH[1], SPANISH_LABELS[1], present=False)
    corrupt(root / "0" / "s11_pa.png")
    add("s11", "pat_F", "s11_l.png", "L", SPANISH[1], SPANISH_LABELS[1])
    for image, proj in (("s12_pa.png", "PA"), ("s12_l.png", "L"), ("s12_costal.png", "COSTAL"), ("s12_ap.png", "AP")):
        add("s12", "pat_G", image, proj, SPANISH[6], SPANISH_LABELS[6], folder="2")
    for i in range(extra):
        add(f"e{i + 1}", f"pat_e{i + 1}", f"e{i + 1}_pa.png", "PA", SPANISH[i % 8], SPANISH_LABELS[i % 8],
            bits=16 if i % 2 else 8, folder=str(i % 3))
    if malformed:
        add("s99", "pat_Z", "s99_pa.png", "PA", SPANISH[0], "['cardiomegaly'")
    (root / "known_unreadable.txt").write_text("s5_pa.png\n")
    write_csv(root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv", PADCHEST_COLUMNS, rows)
    return root


CXP_COLUMNS = ["path_to_image", "path_to_dcm", "frontal_lateral", "ap_pa", "deid_patient_id",
               "patient_report_date_order", "report", "section_narrative", "section_clinical_history",
               "section_history", "section_comparison", "section_technique", "section_procedure_comments",
               "section_findings", "section_impression", "section_end_of_impression", "section_summary",
               "section_accession_number", "age", "sex", "race", "ethnicity", "interpreter_needed",
               "insurance_type", "recent_bmi", "deceased", "split"]


def make_chexpert_plus(root: str | os.PathLike, malformed: bool = False, size: int = 48) -> Path:
    """CheXpert Plus layout (CSV gzipped; images as PNG although the CSV says .jpg, except study 3's JPEG):

    train/patient00001/study1: Frontal PA + 2 Laterals, findings+impression, CheXbert labels -> PA, LATERAL
                               (the second lateral: view_over_max_views)
    train/patient00001/study2: Frontal AP, impression only                                 -> AP
    train/patient00002/study1: Lateral only -> no_frontal | valid/patient00003/study1: JPEG on disk, valid -> validate
    train/patient00004/study1: image missing -> missing_image | train/patient00005/study1: no sections, report only
    the first row is duplicated -> row_duplicate; ``malformed`` adds a row with a missing field.
    chexbert_labels/{report,findings,impression}_fixed.json: labels for studies 1 (all three) and
    patient00001/study2 (report, impression), plus a report line for an image the CSV does not list.
    """
    root = Path(root)
    spec = [("train/patient00001/study1/view1_frontal.jpg", "Frontal", "PA", "patient00001", "Heart is enlarged.",
             "Cardiomegaly.", "", "png"),
            ("train/patient00001/study1/view2_lateral.jpg", "Lateral", "", "patient00001", "Heart is enlarged.",
             "Cardiomegaly.", "", "png"),
            ("train/patient00001/study1/view3_lateral.jpg", "Lateral", "", "patient00001", "Heart is enlarged.",
             "Cardiomegaly.", "", "png"),
            ("train/patient00001/study2/view1_frontal.jpg", "Frontal", "AP", "patient00001", "",
             "No acute process.", "", "png"),
            ("train/patient00002/study1/view1_lateral.jpg", "Lateral", "", "patient00002", "Clear.", "Normal.", "",
             "png"),
            ("valid/patient00003/study1/view1_frontal.jpg", "Frontal", "PA", "patient00003", "Small effusion.",
             "Effusion.", "", "jpg"),
            ("train/patient00004/study1/view1_frontal.jpg", "Frontal", "PA", "patient00004", "Clear.", "Normal.",
             "", None),
            ("train/patient00005/study1/view1_frontal.jpg", "Frontal", "AP", "patient00005", "", "",
             "NARRATIVE: CHEST.\n\nLines and tubes unchanged.", "png")]
    rows = []
    for i, (rel, fl, apa, pat, fnd, imp, report, ext) in enumerate(spec):
        split = "valid" if rel.startswith("valid") else "train"
        rows.append([rel, rel.replace(".jpg", ".dcm"), fl, apa, pat, 1, report or f"FINDINGS: {fnd}\nIMPRESSION: {imp}",
                     "", "", "", "", "", "", fnd, imp, "", "", "", 60, "Male", "White", "", "", "", "", "", split])
        if ext == "png":
            write_png(root / rel.replace(".jpg", ".png"), size, size, seed=i, bits=8 if i % 2 else 16)
        elif ext == "jpg":
            write_jpeg(root / rel, size, size, seed=i)
    rows.insert(1, list(rows[0]))
    if malformed:
        rows.append(rows[0][:-1])
    write_csv(root / "df_chexpert_plus_240401.csv", CXP_COLUMNS, rows, gz=True)
    (root / "chexbert_labels").mkdir(exist_ok=True)
    lab = {n: None for n in CHEXPERT_LABELS}
    files = {"report": [(spec[0][0], {"Cardiomegaly": 1.0, "Edema": 0.0}), (spec[3][0], {"No Finding": 1.0}),
                        ("train/patient09999/study1/view1_frontal.jpg", {"Edema": 1.0})],  # not in the CSV
             "findings": [(spec[0][0], {"Cardiomegaly": 1})],
             "impression": [(spec[0][0], {"Cardiomegaly": 1, "Pleural Effusion": -1}), (spec[3][0], {"No Finding": 1})]}
    for section, lines in files.items():
        with open(root / "chexbert_labels" / f"{section}_fixed.json", "w") as f:
            for path, values in lines:
                f.write(json.dumps({"path_to_image": path, **lab, **values}) + "\n")
    return root


def _iu_xml(uid: str, sections: dict[str, str], images: list[str], captions: list[str]) -> str:
    texts = "".join(f'<AbstractText Label="{k}">{v}</AbstractText>' for k, v in sections.items())
    imgs = "".join(f'<parentImage id="{i}"><figureId>F{n + 1}</figureId><caption>{c}</caption><panel type="single">'
                   f'<url>/hadoop/storage/radiology/extract/{i}.jpg</url></panel></parentImage>'
                   for n, (i, c) in enumerate(zip(images, captions)))
    return (f'<?xml version="1.0" encoding="utf-8"?><eCitation><meta type="rr"/><uId id="{uid}"/>'
            f'<pmcId id="{uid[3:]}"/><MedlineCitation Owner="Indiana University" Status="supplied"><Article '
            f'PubModel="Electronic"><Abstract>{texts}</Abstract></Article></MedlineCitation>{imgs}</eCitation>')


IU_FULL = {"COMPARISON": "None.", "INDICATION": "Cough.", "FINDINGS": "The lungs are clear.",
           "IMPRESSION": "No acute disease."}
# Open-i's captions are the examination, written on every image of a study, and de-identified: the
# three below stand for the patterns of the public reports (the XML layout is that of Open-i's
# ecgen-radiology files: parentImage id / figureId / caption / panel url).
IU_EXAM = "Xray Chest PA and Lateral"
IU_REDACTED = "Chest XXXX and lateral"  # XXXX was "PA": not a lateral-only study
IU_BOTH = "PA and lateral"


def iu_image_id(n: int, k: int) -> str:
    return f"CXR{n}_1_IM-000{n}-{1001 + k}"


def _iu_png(path: Path, kind: str, h: int, w: int, seed: int) -> None:
    """A frontal or lateral phantom (shards/demo_image.py) at (h, w); "flat" is the plain gradient."""
    import numpy as np
    from PIL import Image

    from shards.demo_image import render_frontal, render_lateral, sample_anatomy

    if kind == "flat":
        write_png(path, h, w, seed=seed, bits=8)
        return
    rng = np.random.default_rng(seed)
    an = sample_anatomy(rng)
    img = render_frontal(an, {}, 96, rng)[0] if kind == "frontal" else render_lateral(an, {}, 96, rng)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).resize((w, h), Image.Resampling.BILINEAR).save(path, format="PNG")


def make_iu_xray(root: str | os.PathLike, malformed: bool = False, size: int = 48) -> Path:
    """Open-i layout (images ``iu_image_id(n, k)``, phantoms: F frontal, L lateral, G a plain gradient):

    CXR1 L, F, exam caption on both -> FRONTAL (image 2), LATERAL (image 1) from the pixels
    CXR2 F, impression only -> FRONTAL   | CXR3 F + a missing image -> FRONTAL (view_missing_image)
    CXR4 both images missing -> missing_image | CXR5 empty FINDINGS and IMPRESSION -> empty_report
    CXR6 captions Lateral, PA, Lateral (per image, trusted) -> PA, LATERAL (the second lateral:
         view_over_max_views) | CXR7 one image captioned Lateral -> no_frontal | CXR8 no parentImage -> no_image
    CXR10 F, L captioned "Chest XXXX and lateral" on both -> FRONTAL, LATERAL (kept: the old reading
          called it lateral-only) | CXR11 L, F captioned "PA and lateral" on both -> FRONTAL (image 2), LATERAL
    CXR12 one L captioned "Chest XXXX and lateral" -> no_frontal, from the pixels at load time
    CXR13 G, G with the exam caption -> UNKNOWN, UNKNOWN (nothing tells them apart), XML order
    ``indiana_projections.csv`` (Kaggle redistribution's names): CXR1's first image Lateral, its second
    Frontal, so with ``projections:`` CXR1 is FRONTAL (image 2), LATERAL (image 1).
    ``malformed`` adds a truncated XML file (9.xml).
    """
    root = Path(root)
    rep, img = root / "ecgen-radiology", root / "NLMCXR_png"
    rep.mkdir(parents=True, exist_ok=True)
    spec = {1: (IU_FULL, "LF", None),
            2: ({"INDICATION": "Pain.", "FINDINGS": "", "IMPRESSION": "Normal chest."}, "F", None),
            3: ({**IU_FULL, "FINDINGS": "Mild cardiomegaly."}, "F-", None),
            4: (IU_FULL, "--", None),
            5: ({"INDICATION": "x", "FINDINGS": "", "IMPRESSION": ""}, "F", None),
            6: ({**IU_FULL, "FINDINGS": "Small right effusion.", "IMPRESSION": "Effusion."}, "LFL",
                ["Lateral", "PA", "Lateral"]),
            7: ({**IU_FULL, "FINDINGS": "Lateral only."}, "L", ["Lateral"]),
            8: (IU_FULL, "", None),
            10: ({**IU_FULL, "FINDINGS": "Stable granuloma."}, "FL", [IU_REDACTED] * 2),
            11: ({**IU_FULL, "FINDINGS": "Hyperinflated lungs."}, "LF", [IU_BOTH] * 2),
            12: ({**IU_FULL, "FINDINGS": "Kyphosis."}, "L", [IU_REDACTED]),
            13: ({**IU_FULL, "FINDINGS": "No change."}, "GG", None)}
    kinds = {"F": "frontal", "L": "lateral", "G": "flat"}
    for n, (sections, images, captions) in spec.items():
        ids = [iu_image_id(n, k) for k in range(len(images))]
        (rep / f"{n}.xml").write_text(_iu_xml(f"CXR{n}", sections, ids, captions or [IU_EXAM] * len(ids)))
        for k, (i, kind) in enumerate(zip(ids, images)):
            if kind != "-":
                _iu_png(img / f"{i}.png", kinds[kind], size, size - 4 * k, seed=n * 10 + k)
    write_csv(root / "indiana_projections.csv", ["uid", "filename", "projection"],
              [[1, "1_IM-0001-1001.dcm.png", "Lateral"], [1, "1_IM-0001-1002.dcm.png", "Frontal"],
               [2, "2_IM-0002-1001.dcm.png", "Frontal"]])
    if malformed:
        (rep / "9.xml").write_text("<eCitation><uId id='CXR9'/>")
    return root


def make_r2gen(root: str | os.PathLike, malformed: bool = False, size: int = 48) -> Path:
    """R2Gen annotation.json (MIMIC variant with subject ids): m1 (subject 1, train, 2 images), m2 (subject 1,
    train), m3 (subject 2, val -> validate, one image missing), m4 (subject 3, test, images missing ->
    missing_image), m5 (subject 4, test, empty report -> empty_report), m1 again in test -> row_duplicate,
    m6 (subject 5, train, three images -> the first two, view_over_max_views);
    ``malformed`` adds a record without image_path."""
    root = Path(root)
    data = {"train": [{"id": "m1", "study_id": 101, "subject_id": 1, "report": "the heart is normal . lungs clear .",
                       "image_path": ["p1/s101/a.jpg", "p1/s101/b.jpg"], "split": "train"},
                      {"id": "m2", "study_id": 102, "subject_id": 1, "report": "no effusion .",
                       "image_path": ["p1/s102/a.jpg"], "split": "train"},
                      {"id": "m6", "study_id": 106, "subject_id": 5, "report": "stable cardiomegaly .",
                       "image_path": ["p5/s106/a.jpg", "p5/s106/b.jpg", "p5/s106/c.jpg"], "split": "train"}],
            "val": [{"id": "m3", "study_id": 103, "subject_id": 2, "report": "small effusion .",
                     "image_path": ["p2/s103/a.jpg", "p2/s103/missing.jpg"], "split": "val"}],
            "test": [{"id": "m4", "study_id": 104, "subject_id": 3, "report": "clear .",
                      "image_path": ["p3/s104/a.jpg"], "split": "test"},
                     {"id": "m5", "study_id": 105, "subject_id": 4, "report": "  ", "image_path": ["p4/s105/a.jpg"],
                      "split": "test"},
                     {"id": "m1", "study_id": 101, "subject_id": 1, "report": "dup", "image_path": ["p1/s101/a.jpg"],
                      "split": "test"}]}
    for i, rel in enumerate(["p1/s101/a.jpg", "p1/s101/b.jpg", "p1/s102/a.jpg", "p2/s103/a.jpg", "p4/s105/a.jpg",
                             "p5/s106/a.jpg", "p5/s106/b.jpg", "p5/s106/c.jpg"]):
        write_jpeg(root / "images" / rel, size, size - 4 * (ord(rel[-5]) - ord("a")), seed=i)
    if malformed:
        data["test"].append({"id": "m9", "report": "x"})
    (root / "annotation.json").write_text(json.dumps(data))
    return root
