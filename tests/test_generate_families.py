"""``rrg generate`` for families whose eval inputs include more than the image: segmenter masks, KG subgraphs.

The tiny demo shards (the session's, copied) get the family's shard pass - ``rrg shards masks``
with a tiny random U-Net, or ``rrg kg build`` + ``rrg kg attach`` - and a tiny model of the family
(random weights at a large init scale, so the text differs with the image) is exported with the
trainer's own export writer.  The test split's studies are then rendered again by the demo
generator as loose PNG files, one folder per study (lateral views too: a two-view study is one
folder), and ``rrg generate`` on that folder must write exactly ``rrg eval``'s predictions on
the same studies, with the masks / subgraphs it derived equal to what the shard pass stored.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from configs.parallel import SerialPool
from launcher.cli import main
from shards.manifest import iter_json_records, load_manifest
from shards.reader import iter_decoded
from tests.trainkit import ROOT

CXAS7 = ["left_lung", "right_lung", "heart", "mediastinum", "diaphragm", "trachea", "spine"]
# none of the demo's drawn mask channels but "heart": eval can only have read the segmenter's sidecar
RADIX_CHANNELS = ["heart", "trachea", "spine"]
SCALES = [4, 8, 16]

# ~random weights at a large init scale: the text differs with the image (at the usual scale a random
# LM writes nothing, which would make "generate == eval" hold trivially)
MODEL = """  max_text_len: 64
  lm: {hf_config: {initializer_range: 0.3}}
  vision: {hf_config: {initializer_range: 0.3}}
"""
COMMON = """
eval: {split: test, batch_size: 1, max_new_tokens: 12, bootstrap: 0, meteor: false}
cluster: {num_workers: 1}
"""


def write_config(tmp: Path, body: str) -> Path:
    path = tmp / "run.yaml"
    path.write_text(f"base: {ROOT / 'configs' / 'tiny.yaml'}\nname: gen\noutput_dir: {tmp / 'run'}\n{COMMON}{body}")
    return path


def export_untrained(cfg, out_dir: Path, mode: str) -> Path:
    """The family's tokenizer and a seeded random model, written by the trainer's export writer + run config."""
    from modeling.family import build_family
    from modeling.tuning import TuningSpec
    from trainer.export import write_export, write_run_config

    family = build_family(cfg.model)
    manifest = load_manifest(cfg.data.shards_dir)
    tok = family.tokenizer(family.tokenizer_texts(iter_json_records(manifest, cfg.data.train_split)),
                           str(out_dir.parent / "tokenizer"))
    torch.manual_seed(0)
    model = family.build_model(tok, manifest.assets if family.asset_names else None)
    write_export(family, tok, TuningSpec(mode), model.state_dict(), out_dir, merge=True, where="test",
                 shards_dir=cfg.data.shards_dir)
    write_run_config(cfg, out_dir)
    return out_dir


def demo_png_folders(cfg, root: Path) -> dict[str, list[str]]:
    """The test split's studies rendered again by the demo generator: root/<study_id>/{frontal,lateral}.png."""
    from shards.adapters import make_adapter

    adapter = make_adapter(cfg.data.source.adapter, dict(cfg.data.source.args), cfg.seed)
    out = {}
    for rec in iter_json_records(load_manifest(cfg.data.shards_dir), "test"):
        study = adapter.load(int(rec["study_id"].split("-")[1]))
        assert study.study_id == rec["study_id"] and len(study.views) == len(rec["views"])
        folder = root / study.study_id
        folder.mkdir(parents=True)
        files = []
        for view in study.views:  # frontal (PA/AP) first, as the adapter orders them; names sort the same way
            path = folder / ("frontal.png" if view.position in ("PA", "AP") else "lateral.png")
            Image.fromarray(view.image).save(path)
            files.append(str(path))
        out[study.study_id] = files
    return out


def eval_predictions(cfg_path: Path, export: Path, out: Path) -> dict[str, dict]:
    """``rrg eval --model-dir`` (its run_eval, on an in-process task pool instead of Ray)."""
    from trainer.config import load_config
    from trainer.evaluation.evaluate import run_eval

    run_eval(load_config(str(cfg_path)), pool=SerialPool(), model_dir=str(export), out=str(out))
    return {p["id"]: p for p in map(json.loads, (out / "predictions.jsonl").read_text().splitlines())}


def generate(export: Path, inputs: list[Path], out: Path, *extra: str) -> dict[str, dict]:
    assert main(["generate", "--model-dir", str(export), *map(str, inputs), "--out", str(out), *extra]) == 0
    return {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}


def derived_samples(export: Path, folders: dict[str, list[str]]) -> dict[str, object]:
    """The DecodedSamples ``rrg generate`` builds for the PNG studies (views + derived inputs)."""
    from modeling.family import build_family, read_model_json
    from trainer.evaluation.infer_files import InputStudy, derived_passes, resolve_config, study_sample

    cfg = resolve_config(export, None, None)
    passes = derived_passes(build_family(read_model_json(str(export))[1]).derived_inputs(), cfg, export)
    problems: list[str] = []
    out = {sid: study_sample(InputStudy(sid, files), cfg.data.build, problems, passes) for sid, files in folders.items()}
    assert not problems
    return out


def shard_samples(shards_dir: str) -> dict[str, object]:
    m = load_manifest(shards_dir)
    return {s.record["study_id"]: s for shard in m.split_shards("test") for s in iter_decoded(m, shard)}


def assert_generate_equals_eval(setup: dict, tmp_path: Path) -> dict[str, dict]:
    preds = eval_predictions(setup["cfg_path"], setup["export"], tmp_path / "eval")
    folders = setup["folders"]
    assert sorted(preds) == sorted(folders) and len(preds) >= 8
    texts = [p["generated"] for p in preds.values()]
    assert all(texts) and len(set(texts)) >= len(texts) // 2, texts  # equality below means something
    rows = generate(setup["export"], [setup["pngs"]], tmp_path / "reports.jsonl", "--labels")
    assert sorted(rows) == sorted(preds)  # one row per study folder: the views of a folder are one study
    two_view = [sid for sid, files in folders.items() if len(files) == 2]
    assert two_view, "no two-view study in the test split"
    for sid, row in rows.items():
        assert row["files"] == folders[sid]
        assert row["generated"] == preds[sid]["generated"], sid
        assert row["labels"] == preds[sid]["gen_labels"]
    return rows


# ------------------------------------------------------------------------------ radixpert + segmenter
@pytest.fixture(scope="module")
def radixpert(shards, tmp_path_factory) -> dict:
    from shards.passes.masks.run import masks_from_config
    from shards.passes.masks.segmenter import UNet
    from trainer.config import load_config

    tmp = tmp_path_factory.mktemp("gen_radixpert")
    shutil.copytree(shards, tmp / "shards")
    torch.manual_seed(0)
    UNet(1, len(CXAS7), width=4, depth=2).save_pretrained(str(tmp / "unet"), CXAS7, input_size=32)
    cfg_path = write_config(tmp, f"""data:
  shards_dir: {tmp / 'shards'}
  masks: {{backend: hf_dir, path: {tmp / 'unet'}}}
model:
  family: radixpert
  options: {{mask_source: shard, mask_channels: {json.dumps(RADIX_CHANNELS)}, mask_embed_dim: 8}}
{MODEL}""")
    cfg = load_config(str(cfg_path))
    masks_from_config(cfg.data)  # `rrg shards masks`, in process
    export = export_untrained(cfg, tmp / "run" / "export", "projector")
    return {"tmp": tmp, "cfg_path": cfg_path, "cfg": cfg, "export": export,
            "pngs": tmp / "pngs", "folders": demo_png_folders(cfg, tmp / "pngs")}


def test_radixpert_generate_on_demo_pngs_segments_like_the_masks_pass_and_equals_eval(radixpert, tmp_path):
    assert_generate_equals_eval(radixpert, tmp_path)
    # the masks rrg generate made are the ones `rrg shards masks` stored for the same studies
    made, stored = derived_samples(radixpert["export"], radixpert["folders"]), shard_samples(radixpert["cfg"].data.shards_dir)
    for sid, sample in made.items():
        assert sample.mask_channels == stored[sid].mask_channels == CXAS7
        assert np.array_equal(sample.masks, stored[sid].masks), sid
        assert np.array_equal(sample.images[0], stored[sid].images[0])
    allm = np.stack([s.masks for s in made.values()])
    assert 0.05 < allm.mean() < 0.95  # neither empty nor full: the masks carry something


def test_generate_names_the_missing_derived_input_setting(radixpert, tmp_path, capsys):
    # no segmenter in the run config: one line naming the option (before any model is loaded)
    no_seg = tmp_path / "no_seg.yaml"
    no_seg.write_text((radixpert["export"] / "rrg_run.yaml").read_text().replace(
        str(radixpert["tmp"] / "unet"), "''"))
    png = next(iter(radixpert["folders"].values()))[0]
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model-dir", str(radixpert["export"]), "--config", str(no_seg), png,
              "--out", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 3 and "\n" not in err and "data.passes.masks.path" in err and "rrg shards masks" in err
    # mask_source: model needs nothing derived: the sample carries no masks and no pass is asked for
    from modeling.family import build_family
    from trainer.evaluation.infer_files import GenerateError, derived_passes

    own = build_family(dataclasses.replace(radixpert["cfg"].model, options={
        "mask_source": "model", "segmenter": "seg.pt", "num_masks": 3}))
    assert own.derived_inputs() == () and derived_passes((), radixpert["cfg"], radixpert["export"]) == []
    with pytest.raises(GenerateError, match="derived input 'depth'"):
        derived_passes(("depth",), radixpert["cfg"], radixpert["export"])


# ------------------------------------------------------------------------------ r2genkg + KG retrieval
@pytest.fixture(scope="module")
def r2genkg(shards, tmp_path_factory) -> dict:
    from trainer.config import load_config
    from shards.passes.kg.attach import attach
    from shards.passes.kg.graph import build_kg

    tmp = tmp_path_factory.mktemp("gen_r2genkg")
    shutil.copytree(shards, tmp / "shards")
    cfg_path = write_config(tmp, f"""data:
  shards_dir: {tmp / 'shards'}
  kg: {{scales: {json.dumps(SCALES)}, bank_epochs: 2}}
model:
  family: r2genkg
  options: {{num_scales: {len(SCALES)}, dim: 32, kg_queries: 2}}
{MODEL}train: {{packing: {{enabled: false}}}}
""")
    cfg = load_config(str(cfg_path))
    build_kg(cfg.data, log=lambda *_: None)  # `rrg kg build` + `rrg kg attach`, in process
    attach(cfg.data, SerialPool(), log=lambda *_: None)
    export = export_untrained(cfg, tmp / "run" / "export", "full")
    return {"tmp": tmp, "cfg_path": cfg_path, "cfg": cfg, "export": export,
            "pngs": tmp / "pngs", "folders": demo_png_folders(cfg, tmp / "pngs")}


def test_r2genkg_generate_on_demo_pngs_retrieves_like_kg_attach_and_equals_eval(r2genkg, tmp_path, capsys):
    export = r2genkg["export"]
    assert (export / "assets" / "kg" / "index.safetensors").is_file() and (export / "assets" / "kg_bank").is_dir()
    assert_generate_equals_eval(r2genkg, tmp_path)
    # the subgraphs rrg generate retrieved (from the export's KG asset) are the ones `rrg kg attach` stored
    made, stored = derived_samples(export, r2genkg["folders"]), shard_samples(r2genkg["cfg"].data.shards_dir)
    for sid, sample in made.items():
        got, want = sample.tensors["kg"], stored[sid].tensors["kg"]
        assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want), sid
    # normal neighbours vote for no entity, so some subgraphs may be empty, but not all of them
    assert any(len(s.tensors["kg"]["s0_node_ids"]) > 0 for s in made.values())
    assert len({tuple(s.tensors["kg"]["neighbours"]) for s in made.values()}) > 1  # retrieval depends on the image
    # an export without its KG asset: one line naming it
    broken = tmp_path / "no_kg"
    shutil.copytree(export, broken)
    shutil.rmtree(broken / "assets" / "kg")
    png = next(iter(r2genkg["folders"].values()))[0]
    with pytest.raises(SystemExit) as exit_:
        main(["generate", "--model-dir", str(broken), png, "--out", str(tmp_path / "x.jsonl")])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert exit_.value.code == 3 and "assets/kg" in err and "kg attach" in err
