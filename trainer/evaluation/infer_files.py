"""``rrg generate``: reports for loose image files (PNG, JPEG, DICOM) from an exported model.

Each file is preprocessed exactly as the shard writer does it (``shards.views.encode_view``:
one copy of that code), the study's members (views, record, derived inputs) become a
:class:`~shards.records.DecodedSample` through the reader's own ``decode``, and then go through
the model family's ``sample_builder(tok, "eval")`` + ``collate(tok)`` and
``trainer.evaluation.generate.generate_batches``, the calls ``rrg eval`` makes.  So the
reports equal ``rrg eval``'s predictions for the same studies.

Studies: a FILE argument is one study (id: its name without extension); a
folder holding image files is one study (its files are the views, frontal
DICOM views first); a folder of such folders gives one study per subfolder (id:
the path below the argument).  An unreadable or unusable file is reported and
skipped; a study with no usable file is reported and left out.

Derived inputs: what a family's eval-mode builder reads beyond the image and a data pass
caches beside the shards (``family.derived_inputs()``, each the name of a pass in shards/passes/) is
made for each new study by that pass's own per-study function (its ``DataPass.generate`` hook, with
the run config's ``data.passes.<name>`` and the export's assets), and the members it returns are
joined and decoded by the reader's :func:`shards.reader.decode`, as a sidecar's are.  The step is
keyed by the input's name, never by the family's.

Preprocessing (``data.build``), derived inputs (``data.passes.<name>``) and generation
(``eval``) settings come from the run config: ``--config``, else the checkpoint's, else
``rrg_run.yaml`` in the export, else the training output's ``config.yaml`` beside ``export/``.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

import numpy as np

from shards.dicom import DICOM_EXTENSIONS, DicomSkip, is_dicom, is_sr, read_header
from shards.records import DecodedSample
from shards.views import decode_image, encode_view, frontal_first
from shards.writer import sample_key

from trainer.export import RUN_CONFIG

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff") + DICOM_EXTENSIONS


class GenerateError(ValueError):
    """Bad inputs for ``rrg generate`` (missing path, no study, no run config); one line, names the path."""


@dataclass
class InputStudy:
    id: str
    files: list[str]


def _is_image(path: str) -> bool:
    return path.lower().endswith(IMAGE_EXTENSIONS) or is_dicom(path)


def _ordered(files: list[str]) -> list[str]:
    """Sorted by name; DICOM views frontal (PA, AP) first, as the DICOM adapters order them; SR documents dropped."""
    views, positions = [], []
    for f in sorted(files):
        try:
            ds = read_header(f) if is_dicom(f) else None
        except DicomSkip:
            ds = None  # reported when its pixels fail to load
        if ds is not None and is_sr(ds):
            continue
        views.append(f)
        positions.append(str(ds.get("ViewPosition", "")) if ds is not None else None)
    return [views[i] for i in frontal_first(positions)]


def collect_studies(inputs: list[str]) -> list[InputStudy]:
    """FILES_OR_FOLDERS -> studies (see the module docs); ids must be unique."""
    studies: list[InputStudy] = []
    for arg in inputs:
        path = os.path.abspath(arg)
        if os.path.isfile(path):
            studies.append(InputStudy(Path(path).stem, [path]))
            continue
        if not os.path.isdir(path):
            raise GenerateError(f"rrg generate: no such file or folder: {arg}")
        found = 0
        for dirpath, dirnames, files in os.walk(path):
            dirnames.sort()
            images = _ordered([os.path.join(dirpath, f) for f in files if _is_image(os.path.join(dirpath, f))])
            if images:
                rel = os.path.relpath(dirpath, path)
                studies.append(InputStudy(Path(path).name if rel == "." else rel, images))
                found += 1
        if not found:
            raise GenerateError(f"rrg generate: no image files (png, jpg, dcm, ...) under {arg}")
    seen: dict[str, str] = {}
    for st in studies:
        if st.id in seen:
            raise GenerateError(f"rrg generate: two studies named '{st.id}' ({seen[st.id]} and {st.files[0]})")
        seen[st.id] = st.files[0]
    return studies


# ---- derived inputs (family.derived_inputs()): the shard pass's own per-study function + its context
MakeMembers = Callable[[DecodedSample, Any], dict]


def derived_passes(names, cfg, model_dir: Path) -> list[tuple[str, MakeMembers, Any]]:
    """(name, make_members, context) for each derived input a family reads, from the pass of that name."""
    from shards.passes import PassInputError, all_passes, resolve

    makers = {p.name: p.generate for p in all_passes() if p.generate}
    out = []
    for name in names:
        if name not in makers:
            raise GenerateError(f"rrg generate: the model reads the derived input '{name}', which rrg generate "
                                f"cannot make (it makes {sorted(makers)})")
        try:
            out.append((name, *resolve(makers[name])(cfg, model_dir)))
        except PassInputError as err:
            raise GenerateError(f"rrg generate: {err}") from None
    return out


def study_sample(study: InputStudy, build, problems: list[str],
                 derived: list[tuple[str, MakeMembers, Any]] = ()) -> Optional[DecodedSample]:
    """Views preprocessed as the writer stores them, derived inputs made by their passes, all decoded by the reader."""
    from shards.reader import decode

    members: dict[str, bytes] = {}
    views = []
    for f in study.files:
        try:
            data, ext, _, facts = encode_view(f, build)
            decode_image(data)
        except DicomSkip as skip:
            problems.append(f"skipped {skip}")
            continue
        except Exception as err:  # noqa: BLE001 - PIL/OS errors of any kind: report, skip, go on
            problems.append(f"skipped {f}: unreadable image ({type(err).__name__}: {err})")
            continue
        member = f"view{len(views)}.{ext}"
        members[member] = data
        views.append({"member": member, "file": os.path.basename(f), **facts})
    if not views:
        problems.append(f"left out study '{study.id}': no usable image")
        return None
    record = {"study_id": study.id, "report": {"text": "", "findings": "", "impression": ""}, "views": views}
    members["json"] = json.dumps(record, default=_plain).encode()
    key = sample_key(study.id)
    sample = decode(key, "", members)
    if derived:
        for name, make_members, ctx in derived:
            try:
                made = make_members(sample, ctx)
            except (ValueError, RuntimeError, OSError) as err:  # the pass's own error, a channel mismatch, a missing file
                raise GenerateError(f"rrg generate: study '{study.id}': derived input '{name}' failed: {err}") from None
            members.update(made or {})
        sample = decode(key, "", members)  # joined as the reader joins a sidecar's members
    return sample


def _plain(o: Any) -> Any:
    return o.item() if isinstance(o, np.generic) else str(o)


def resolve_config(model_dir: Path, config: Optional[str], checkpoint_meta: Optional[dict]):
    """The run config: ``--config``, else the checkpoint's, else the export's ``rrg_run.yaml`` or ../config.yaml."""
    from trainer.config import config_from_dict as run_config_from_dict, load_config as load_run_config
    if config:
        return load_run_config(config)
    if checkpoint_meta and "config" in checkpoint_meta:
        return run_config_from_dict(checkpoint_meta["config"])
    for cand in (model_dir / RUN_CONFIG, model_dir.parent / "config.yaml"):
        if cand.is_file():
            return load_run_config(str(cand))
    raise GenerateError(f"rrg generate: no run config found for {model_dir} (no {RUN_CONFIG} in it, no config.yaml "
                        f"beside it): pass --config CONFIG so preprocessing matches the shards the model saw")


def _batches(samples: list[DecodedSample], builder, collate, size: int) -> Iterator[dict]:
    for start in range(0, len(samples), size):
        yield collate([builder(s) for s in samples[start:start + size]])


def generate_files(inputs: list[str], *, model_dir: str, checkpoint: Optional[str] = None,
                   config: Optional[str] = None, out: str = "reports.jsonl", labels: bool = False,
                   batch_size: Optional[int] = None, device: str = "auto", out_format: str = "jsonl",
                   rexrank_input: Optional[str] = None) -> list[dict[str, Any]]:
    """Write one JSON line per study (id, generated, files[, labels]) to ``out`` -- or, with
    ``out_format="rexrank"``, ReXrank's prediction JSON (trainer/evaluation/rexrank.py); returns the rows."""
    if out_format not in ("jsonl", "rexrank"):
        raise GenerateError(f"rrg generate: unknown --format {out_format!r} (jsonl or rexrank)")
    if rexrank_input and out_format != "rexrank":
        raise GenerateError("rrg generate: --rexrank-input needs --format rexrank")
    if rexrank_input and not os.path.isfile(rexrank_input):
        raise GenerateError(f"rrg generate: no such file: {rexrank_input} (--rexrank-input)")
    import torch

    from modeling.family import build_family, load_pretrained, read_model_json
    from trainer.evaluation.generate import gen_config, generate_batches

    model_path = Path(model_dir).resolve()
    meta = None
    if checkpoint:
        from trainer.checkpoint import CheckpointManager

        point = CheckpointManager(str(Path(checkpoint).parent), rank=0, world_size=1, keep_last=1).resolve(
            str(Path(checkpoint).resolve()))
        meta = point.meta
    cfg = resolve_config(model_path, config, meta)
    if checkpoint and not (model_path / "rrg_model.json").is_file():
        from trainer.export import export_checkpoint

        export_checkpoint(cfg, point, model_path)
    if not (model_path / "rrg_model.json").is_file():
        raise GenerateError(f"rrg generate: {model_path} is not an rrg export (no rrg_model.json)")
    studies = collect_studies(inputs)
    derived = derived_passes(build_family(read_model_json(str(model_path))[1]).derived_inputs(), cfg, model_path)
    problems: list[str] = []
    threads = torch.get_num_threads()
    try:
        if derived:
            torch.set_num_threads(1)  # as the passes run in their pool workers (one thread each)
        samples = [s for s in (study_sample(st, cfg.data.build, problems, derived) for st in studies) if s is not None]
    finally:
        torch.set_num_threads(threads)
    for p in problems:
        print(f"rrg generate: {p}", file=sys.stderr)
    if not samples:
        raise GenerateError("rrg generate: no study had a usable image")

    dev = torch.device("cuda" if device == "cuda" or (device == "auto" and torch.cuda.is_available()) else "cpu")
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" and dev.type == "cuda" else torch.float32
    model = load_pretrained(str(model_path)).eval().to(device=dev, dtype=dtype)
    family, tok = build_family(model.cfg), model.tokenizer
    gen = gen_config(cfg)
    batches = _batches(samples, family.sample_builder(tok, "eval", gen=gen), family.collate(tok),
                       batch_size or cfg.eval.batch_size)
    preds = list(generate_batches(model, family, tok, batches, gen, device=dev, dtype=dtype))
    files = {st.id: st.files for st in studies}
    rows = [{"id": p["id"], "generated": p["generated"], "files": files[p["id"]],
             **({"trace": p["trace"]} if p.get("trace") else {})} for p in preds]  # the family's trace (e.g. a chain of thought)
    if labels:
        from shards.labeling import LABELERS

        labeler = LABELERS.get(cfg.eval.labeler, "eval.labeler")(**cfg.eval.labeler_args)
        for row, lab in zip(rows, labeler([r["generated"] for r in rows])):
            row["labels"] = lab
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    if out_format == "rexrank":
        from trainer.evaluation.rexrank import write_rexrank

        write_rexrank(rows, out, rexrank_input)
        print(f"rrg generate: {len(rows)} studies, {len(problems)} problems -> {out} (ReXrank JSON)", flush=True)
        return rows
    with open(out, "w") as f:
        for row in rows:
            f.write(json.dumps(row, default=_plain) + "\n")
    print(f"rrg generate: {len(rows)} studies, {len(problems)} problems -> {out}", flush=True)
    return rows
