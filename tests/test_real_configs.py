"""Every shipped real-scale config, pointed at tiny checkpoints in the real layouts (tests/ckptkit.py), as a user's
first run would: the config as it ships (its recipe: encoder format, input size, feature layer, template, LoRA
targets, stages, packing), with only the paths, the data and the sizes of a 2-core CI machine changed.

For each config: its family's preparation (`rrg shards masks` with a tiny U-Net, `rrg annotate topics`,
`rrg annotate reasoning`, `rrg kg build` + `rrg kg attach`) on one copy of the session's tiny demo shards, then
two `rrg train` runs on 2 CPU workers (torchrun backend): ZeRO-3 bf16 with the config's own stages (ending in
LoRA; stage hand-offs in place), and ZeRO-2 bf16 with full fine-tuning; each exports, and `rrg generate` on the
export writes the same text as `rrg generate --checkpoint` (the checkpoint consolidated by zero_to_fp32).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from launcher.cli import main
from tests import ckptkit
from tests.trainkit import ROOT, step_losses

CXAS7 = ["left_lung", "right_lung", "heart", "mediastinum", "diaphragm", "trachea", "spine"]
REGIONS = {"ribs": ["left_lung", "right_lung"], "vertebrae": ["spine"], "abdomen": ["diaphragm"],
           "mediastinum": ["mediastinum", "trachea"]}

# config -> (vision checkpoint, LM checkpoint, what the family's options need at this size; the tiny SentencePiece
# vocabulary (~320 pieces) spends ~3x the tokens of a real one on Vicuna's system prompt, hence the longer budgets)
# BiomedCLIP-CXR runs at 56 px here (4 x 4 patches, its 37 x 37 position embeddings resized as open_clip does):
# 1,369 image tokens per image on a 2-core CPU in bf16 would dominate the suite; tests/test_checkpoints.py runs the
# tower at its native 518 px against a reference forward.
SMALL_518 = {"biomedclip_cxr_518": ", image_size: 56"}
CONFIGS = {
    "llava_rad_7b": ("biomedclip_cxr_518", "vicuna", ""),
    "llava_ta_vicuna7b": ("biomedclip_cxr_518", "vicuna", f"  options: {{region_channels: {json.dumps(REGIONS)}}}\n"
                          "  max_text_len: 384\n"),
    "lvmed_r2_7b": ("clip_dual", "llama2", "  options: {max_len: {report: 384, reasoning: 640, reflection: 704}}\n"),
    "r2genkg_llama2_7b": ("swin_classifier", "llama2", "  options: {dim: 32, heads: 4, num_queries: 4, kg_queries: 2, "
                          "qformer_layers: 1, rgcn_layers: 1, num_bases: 2}\n"),
    "radixpert_medgemma4b": ("biovil", "medgemma", "  options: {mask_channels: [heart, trachea, spine], "
                             "mask_embed_dim: 8}\n"),
}


@pytest.fixture(scope="module")
def world(shards, tmp_path_factory):
    """The tiny checkpoints, and one shard copy holding every family's sidecars (made by the real passes)."""
    from shards.passes.masks.segmenter import UNet

    tmp = tmp_path_factory.mktemp("real")
    made = {n for v, lm, _ in CONFIGS.values() for n in (v, lm)}
    ck = {name: (ckptkit.medgemma(tmp / "ckpt" / name, tied=False) if name == "medgemma" else
                 getattr(ckptkit, name)(tmp / "ckpt" / name)) for name in made}
    torch.manual_seed(0)
    UNet(1, len(CXAS7), width=4, depth=2).save_pretrained(str(tmp / "unet"), CXAS7, input_size=32)
    shutil.copytree(shards, tmp / "shards")
    world = {"tmp": tmp, "ck": ck, "shards": tmp / "shards", "unet": tmp / "unet"}
    # the passes `rrg shards masks`, `rrg annotate topics|reasoning`, `rrg kg build|attach` run, in process, on the
    # serial task pool (the CLI's Ray pool runs the same functions)
    from configs.parallel import SerialPool
    from shards.passes.reasoning.annotate import annotate_reasoning
    from shards.passes.masks.run import masks_from_config
    from trainer.config import load_config
    from shards.passes.kg.attach import attach
    from shards.passes.kg.graph import build_kg
    from shards.passes.topics.annotate import annotate_topics

    def cfg(name):
        return load_config(str(write_config(world, name, zero=2, full=False)))

    masks_from_config(cfg("radixpert_medgemma4b").data, SerialPool())
    annotate_topics(str(world["shards"]), cfg("llava_ta_vicuna7b").data.passes.topics, pool=SerialPool())
    annotate_reasoning(str(world["shards"]), cfg("lvmed_r2_7b").data.passes.reasoning, pool=SerialPool())
    kg = cfg("r2genkg_llama2_7b").data
    build_kg(kg, log=lambda *_: None)
    attach(kg, SerialPool(), log=lambda *_: None)
    return world


def stages_yaml(name: str, full: bool) -> str:
    """The config's own stages at one step each (two steps in all), or one full fine-tuning stage of two steps."""
    from modeling.config import without_path_checks
    from trainer.config import load_config

    with without_path_checks():
        cfg = load_config(str(ROOT / "configs" / f"{name}.yaml"))
    stages = cfg.train.resolved_stages()
    if full:
        return f"  stages: [{{name: full, tuning: full, steps: 2, target: {stages[-1].target}}}]\n"
    if len(stages) == 1:
        return f"  stages: [{{name: {stages[0].name}, tuning: {stages[0].tuning}, steps: 2, target: {stages[0].target}}}]\n"
    assert len(stages) == 2 and stages[-1].tuning == "lora", stages
    return "  stages: [" + ", ".join(f"{{name: {s.name}, tuning: {s.tuning}, steps: 1, target: {s.target}}}"
                                     for s in stages) + "]\n"


def write_config(world: dict, name: str, *, zero: int, full: bool) -> Path:
    vision, lm, options = CONFIGS[name]
    tag = f"{name}-z{zero}{'-full' if full else ''}"
    path = world["tmp"] / f"{tag}.yaml"
    kg = "  kg: {scales: [4, 8, 16], bank_epochs: 1, feature_dim: 32}\n" if name.startswith("r2genkg") else ""
    path.write_text(f"""base: {ROOT / 'configs' / f'{name}.yaml'}
name: {tag}
output_dir: {world['tmp'] / 'runs' / tag}
data:
  shards_dir: {world['shards']}
  loader_workers: 0
  shuffle_buffer: 16
  masks: {{backend: hf_dir, path: {world['unet']}}}
{kg}model:
  vision: {{path: {world['ck'][vision]}{SMALL_518.get(vision, "")}}}
  lm: {{path: {world['ck'][lm]}}}
{options}train:
  zero_stage: {zero}
  precision: bf16
  micro_batch_size: 2
  grad_accum: 1
  warmup_steps: 1
{stages_yaml(name, full)}checkpoint: {{every_steps: 1, keep_last: 3, export: merged}}
logging: {{every_steps: 1, progress_bar: false, wandb: {{mode: disabled}}}}
eval: {{split: test, batch_size: 2, max_new_tokens: 8, bootstrap: 0, meteor: false}}
cluster: {{backend: torchrun, num_workers: 2, use_gpu: false, cpus_per_worker: 1}}
""")
    return path


def pngs(world: dict, n: int = 2) -> list[Path]:
    """``n`` test studies rendered again by the demo generator as loose PNG files."""
    from PIL import Image

    from shards.adapters import make_adapter
    from shards.manifest import iter_json_records, load_manifest
    from trainer.config import load_config

    out = world["tmp"] / "pngs"
    if out.is_dir():
        return sorted(out.iterdir())
    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"))
    adapter = make_adapter(cfg.data.source.adapter, dict(cfg.data.source.args), cfg.seed)
    for rec in list(iter_json_records(load_manifest(str(world["shards"])), "test"))[:n]:
        study = adapter.load(int(rec["study_id"].split("-")[1]))
        (out / study.study_id).mkdir(parents=True)
        Image.fromarray(study.views[0].image).save(out / study.study_id / "frontal.png")
    return sorted(out.iterdir())


def generated(model_dir: Path, inputs: list[Path], out: Path, *extra: str) -> dict[str, str]:
    assert main(["generate", "--model-dir", str(model_dir), *map(str, inputs), "--out", str(out), *extra]) == 0
    return {r["id"]: (r["generated"], r.get("trace", "")) for r in map(json.loads, out.read_text().splitlines())}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(CONFIGS))
def test_real_scale_config_on_real_layout_checkpoints_trains_exports_and_generates(world, name):
    from modeling.family import read_model_json

    for zero, full in ((3, False), (2, True)):
        cfg = write_config(world, name, zero=zero, full=full)
        assert main(["train", str(cfg)]) == 0, (name, zero)
        run = world["tmp"] / "runs" / cfg.stem
        losses = step_losses(run)
        assert sorted(losses) == [1, 2] and all(0 < v < 50 for v in losses.values()), losses
        log = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
        rec = next(r for r in log if "model_dtypes" in r)
        meta = rec["model_dtypes"]
        assert set(meta.values()) == {"bfloat16"}, meta  # every module, rrg's own included, in the run's precision
        assert {"vision", "lm"} <= set(meta) and len(meta) >= 3, meta  # + the family's own modules
        # packing on, no flash-attn on CPU: the packed rows ran the per-study SDPA kernel, not a dense mask
        assert rec["attention"]["packed"] == "segments" and rec["attention"]["padded"] == "causal", rec["attention"]
        ckpt = run / "checkpoints" / "step_0000002"
        assert json.loads((ckpt / "meta.json").read_text())["zero_stage"] == zero
        export = run / "export"
        _, saved, _ = read_model_json(str(export))
        assert saved.vision.path and saved.lm.path  # the export is self-contained
        inputs = pngs(world)
        from_export = generated(export, inputs, run / "gen_export.jsonl")
        assert len(from_export) == len(inputs), from_export
        if zero == 3:  # from the ZeRO-3 shards (consolidated by zero_to_fp32): the harder of the two to get right,
            # and each `rrg generate` costs ~12 s of the suite
            from_ckpt = generated(run / "from_checkpoint", inputs, run / "gen_ckpt.jsonl", "--checkpoint", str(ckpt))
            assert from_export == from_ckpt, (from_export, from_ckpt)
        # a random tiny LM writes something (LVMed-R2's report is what follows "Final report:" in its chain, which a
        # random LM never writes: its chain is the text), so the equality means something
        assert any(text or trace for text, trace in from_export.values()), from_export


@pytest.mark.slow
def test_unreadable_or_partial_checkpoints_are_one_line_and_never_retried(world, tmp_path):
    """A directory of a format rrg does not read: one line, exit 2, before Ray starts.  A checkpoint that passes
    the format check but lacks a weight (a partial download): the workers' loading error is one line, exit 2, and
    Ray does not restart the worker group, although cluster.max_failures allows it."""
    import shutil as sh

    from tests.trainkit import env_offline, rrg

    cfg = write_config(world, "llava_rad_7b", zero=2, full=False)
    common = [f"output_dir={tmp_path / 'run'}", "cluster.backend=ray", "cluster.num_workers=2",
              "cluster.max_failures=2", "cluster.ray_temp_dir=/tmp/rr-rc"]
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "model.ckpt").write_bytes(b"\0" * 16)
    proc = rrg(["train", str(cfg), *common, f"model.vision.path={odd}"], env=env_offline(tmp_path))
    log, _ = proc.communicate(timeout=300)
    lines = [ln for ln in log.splitlines() if ln.strip()]
    assert proc.returncode == 2 and "model.vision.path" in lines[-1] and "model.ckpt" in lines[-1], log[-3000:]
    assert "Started training worker group" not in log and not (tmp_path / "run" / "ray").exists()

    partial = tmp_path / "vicuna_partial"
    sh.copytree(world["ck"]["vicuna"], partial)
    shard = partial / "pytorch_model-00002-of-00002.bin"
    state = torch.load(shard, weights_only=True)
    dropped = sorted(state)[0]
    del state[dropped]
    torch.save(state, shard)
    proc = rrg(["train", str(cfg), *common, f"model.lm.path={partial}"], env=env_offline(tmp_path))
    log, _ = proc.communicate(timeout=600)
    errors = [ln for ln in log.splitlines() if ln.startswith("rrg: ") and "lacks 1 weights" in ln]
    assert proc.returncode == 2 and len(errors) == 1, log[-4000:]
    assert dropped in errors[0] or "lacks 1 weights" in errors[0]
    assert log.count("Started training worker group") == 1 and "Traceback" not in log, log[-4000:]
    assert json.loads((tmp_path / "run" / "FATAL.json").read_text())["type"] == "ModelFormatError"
