"""``rrg``: the one console command.

Subcommands stay thin: parse, load + validate the config (so a bad config
fails here, before Ray or any worker starts), then call one function of the
component that does the work.  Heavy imports happen inside the handlers so
``rrg --help`` and config errors are instant.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from configs.schema import ConfigError


def _add_config_args(p: argparse.ArgumentParser, required: bool = False) -> None:
    p.add_argument("config", nargs="?" if not required else None, default=None,
                   help="YAML run config (default: the embedded configs/demo.yaml)")
    p.add_argument("overrides", nargs="*", help="dot-path overrides, e.g. train.lr=1e-4")


def _split_config(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """argparse cannot tell `rrg train a=b` (no config) from `rrg train cfg.yaml`."""
    config, overrides = args.config, list(args.overrides or [])
    if config is not None and "=" in config and not os.path.exists(config):
        overrides.insert(0, config)
        config = None
    return config, overrides


def _load(args: argparse.Namespace):
    from trainer.config import load_config

    config, overrides = _split_config(args)
    return load_config(config, overrides)


def _pool(cfg, address: str | None = None):
    """Ray tasks (embedded local Ray on loopback, or the given cluster) for the data passes and eval."""
    from cluster.ray_util import RayTaskPool

    return RayTaskPool(address=address or cfg.cluster.address or os.environ.get("RAY_ADDRESS"),
                       temp_dir=cfg.cluster.ray_temp_dir)


def _trust(cfg, args) -> None:
    if getattr(args, "trust_checkpoint", False):
        cfg.checkpoint.trust = True
        print("rrg: --trust-checkpoint: checkpoint hashes are not checked and its torch files are fully "
              "unpickled, which runs any code they contain", file=sys.stderr, flush=True)


def cmd_config_show(args):
    import yaml

    print(yaml.safe_dump(_load(args).to_dict(), sort_keys=False), end="")


def cmd_shards_build(args):
    from shards.writer import build_from_config

    from shards.buildlock import refuse_if_locked

    cfg = _load(args)
    if cfg.data.build.lock_wait_s == 0:
        refuse_if_locked(args.out or cfg.data.shards_dir)  # before Ray starts
    manifest = build_from_config(cfg.data, seed=cfg.seed, out_dir=args.out, pool=_pool(cfg))
    print(f"shards: {manifest.root}  studies: {manifest.splits}  fingerprint: {manifest.fingerprint[:16]}")


def cmd_shards_inspect(args):
    from shards.inspect import inspect_shards

    inspect_shards(args.path, out_png=args.out, index=args.index, split=args.split)


def cmd_bench_loader(args):
    from shards.bench.loader import bench_loader

    bench_loader(_load(args), workers=args.workers, batches=args.batches)


def cmd_bench_train(args):
    from trainer.bench.train import bench_train

    from trainer.bench.engine import BigRun

    bench_train(_load(args), steps=args.steps, repeats=args.repeats, stages=tuple(args.stages), big=not args.no_100m,
                big_run=BigRun(micro_batch=args.batch_100m, text_len=args.text_len_100m, steps=args.steps_100m),
                profile=tuple(args.profile))


def cmd_bench_gpu(args):
    import torch

    if not torch.cuda.is_available():
        print("rrg: bench gpu needs a CUDA GPU (torch.cuda.is_available() is False on this machine)", file=sys.stderr)
        raise SystemExit(2)
    from trainer.bench.gpu import bench_gpu

    bench_gpu(_load(args), cases=tuple(args.case), lm=args.lm, lora_lm=args.lora_lm, micro_batch=args.micro_batch,
              seq_len=args.seq_len, steps=args.steps, warmup=args.warmup, zero_stage=args.zero,
              peak_tflops=args.peak_tflops)


def cmd_bench_packing(args):
    from trainer.bench.packing import bench_packing

    bench_packing(_load(args), batches=args.batches, max_len=args.max_len)


def cmd_bench_eval(args):
    from trainer.bench.eval import bench_eval

    bench_eval(_load(args), bootstrap=args.bootstrap, naive=args.naive)


def cmd_bench_checkpoint(args):
    from trainer.bench.checkpoint import bench_checkpoint

    bench_checkpoint(_load(args), directory=args.dir, rounds=args.rounds)


def cmd_bench_build(args):
    from shards.bench.build import bench_build

    cfg = _load(args)
    bench_build(cfg, _pool(cfg), studies=args.studies, rows=args.rows, work_dir=args.dir, repeats=args.repeats,
                check_files=not args.no_check_files)


def cmd_train(args):
    cfg = _load(args)  # validate before anything heavy is imported or started
    if args.resume is not None:
        cfg.checkpoint.resume = args.resume
    _trust(cfg, args)
    if args.overwrite:  # implies a fresh start
        cfg.checkpoint.overwrite = args.overwrite
        cfg.checkpoint.resume = "none" if args.resume is None else cfg.checkpoint.resume
    from trainer.runlock import run_lock_of

    with run_lock_of(cfg):  # one run per output_dir, refused before Ray or torch are even imported
        _train(cfg, args)


def _train(cfg, args) -> None:
    if cfg.cluster.backend == "torchrun":
        from cluster.torchrun import run_training as torchrun_training

        config, overrides = _split_config(args)
        extra = [f"checkpoint.resume={cfg.checkpoint.resume}", f"checkpoint.trust={str(cfg.checkpoint.trust).lower()}"]
        if cfg.checkpoint.overwrite:
            extra.append(f"checkpoint.overwrite={cfg.checkpoint.overwrite}")
        rc = torchrun_training(cfg, config, overrides + extra)
        if rc:
            raise SystemExit(rc)
        return
    from cluster.ray_train import run_training

    run_training(cfg, address=args.address or cfg.cluster.address or os.environ.get("RAY_ADDRESS"))


def cmd_eval(args):
    from trainer.evaluation.evaluate import run_eval, score_predictions_file

    if args.predictions:
        if not args.out:
            raise ConfigError("--out", "scoring a predictions file needs --out DIR")
        if args.narrative_bias:
            raise ConfigError("--narrative-bias", "needs a model to generate with (--checkpoint or --model-dir), "
                              "not --predictions")
        from trainer.evaluation.metric_suite import MetricSuite

        # the metric models come from the config's eval section (eval.radgraph.model_dir=... overrides work)
        suite = MetricSuite.from_eval(_load(args).eval)
        score_predictions_file(args.predictions, args.out, bootstrap=args.bootstrap,
                               labeler=_labeler_from_args(args), meteor=not args.no_meteor, max_chars=args.max_chars,
                               suite=suite)
        return
    cfg = _load(args)
    _trust(cfg, args)
    run_eval(cfg, pool=_pool(cfg, args.address), checkpoint=args.checkpoint, model_dir=args.model_dir,
             out=args.out, image_ablation=args.image_ablation, narrative_bias=args.narrative_bias,
             compare=_compare_args(args.compare))


def _compare_args(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise ConfigError("--compare", f"NAME=PREDICTIONS.jsonl, got {item!r}")
        if not Path(path).is_file():
            raise ConfigError("--compare", f"{path} is not a file (run that eval first)")
        out[name.strip()] = path.strip()
    return out


def cmd_plan(args):
    from modeling.config import without_path_checks
    from trainer.plan import run_plan

    with without_path_checks():  # real-scale configs name model directories that need not exist here
        cfg = _load(args)
    run_plan(cfg, gpus=args.gpus, nodes=args.nodes, gpu_memory=args.gpu_memory, studies=args.studies,
             mfu=args.mfu, peak_tflops=args.peak_tflops)


def cmd_generate(args):
    from trainer.evaluation.infer_files import GenerateError, generate_files

    try:
        generate_files(args.inputs, model_dir=args.model_dir, checkpoint=args.checkpoint, config=args.config,
                       out=args.out, labels=args.labels, batch_size=args.batch_size, device=args.device,
                       out_format=args.format, rexrank_input=args.rexrank_input)
    except GenerateError as err:
        print(str(err), file=sys.stderr)
        sys.exit(3)


def _labeler_from_args(args):
    """``--labeler NAME --labeler-arg key=value ...`` -> a labeler instance (default: the English rule labeler)."""
    import yaml

    from shards.labeling import make_labeler

    kwargs = {}
    for item in args.labeler_arg or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError("--labeler-arg", f"expected key=value, got {item!r}")
        kwargs[key] = yaml.safe_load(value)
    return make_labeler(args.labeler, kwargs, "--labeler")


def cmd_submit_k8s(args):
    from cluster.k8s import submit_k8s

    submit_k8s(_load(args), dry_run=args.dry_run)


def cmd_submit_slurm(args):
    from cluster.slurm import submit_slurm

    cfg = _load(args)
    for flag in ("nodes", "gpus_per_node", "cpus_per_node", "time", "partition"):
        if getattr(args, flag) is not None:
            setattr(cfg.cluster.slurm, flag, getattr(args, flag))
    cfg.cluster.slurm.validate()
    config, _ = _split_config(args)
    submit_slurm(cfg, config_path=config, overrides=_split_config(args)[1], dry_run=args.dry_run)


def cmd_label(args):
    from shards.labeling import label_file

    label_file(args.file, args.out, labeler=_labeler_from_args(args), explain=args.explain, max_chars=args.max_chars)


def _add_labeler_args(p: argparse.ArgumentParser, help_text: str) -> None:
    p.add_argument("--labeler", default="rrg", help=help_text)
    p.add_argument("--labeler-arg", action="append", metavar="KEY=VALUE",
                   help="labeler argument, e.g. checkpoint=chexbert.pth tokenizer=DIR (repeatable)")


TRUST_HELP = ("load a checkpoint that is not hash-verified or needs full unpickling "
              "(it can run arbitrary code: only for checkpoints you trust)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rrg", description="radiology report generation: data, training, evaluation")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (Ray + DeepSpeed)")
    _add_config_args(p)
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one (or RAY_ADDRESS)")
    p.add_argument("--resume", help="auto | none | checkpoint path (overrides checkpoint.resume)")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    p.add_argument("--overwrite", nargs="?", const="move", choices=["move", "delete"], default=None,
                   help="with --resume none: move an old run's checkpoints aside (or delete them) and start fresh")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="generate reports and score them")
    _add_config_args(p)
    p.add_argument("--checkpoint", default=None, help="checkpoint dir or 'latest'")
    p.add_argument("--model-dir", default=None, help="an exported Hugging Face model directory")
    p.add_argument("--predictions", default=None, help="score this predictions JSONL instead of generating")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--image-ablation", default=None, metavar="KIND",
                   help="generate again with inputs blanked: black | shuffle, plus the family's own (docs/evaluation.md; "
                        "an unknown KIND lists the model's) - reports the drop per metric")
    p.add_argument("--narrative-bias", action="store_true",
                   help="also complete the last K sentences from the true report's start (K = 1..eval.narrative_bias."
                        "max_k) with the real and a black image, and report the real-image gain per K (an oracle input)")
    p.add_argument("--compare", action="append", default=[], metavar="NAME=PREDICTIONS",
                   help="also score another run's predictions.jsonl on the same studies, side by side in "
                        "metrics.json as compare_<NAME>_<metric> (e.g. direct_sft=runs/sft/eval/test-step_0000460/predictions.jsonl)")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--no-meteor", action="store_true", help="--predictions: skip METEOR (a Java subprocess)")
    p.add_argument("--max-chars", type=int, default=20_000, help="--predictions: truncate longer texts (counted)")
    p.add_argument("--address", default=None)
    _add_labeler_args(p, "labeler for --predictions (a config's eval.labeler otherwise)")
    p.add_argument("--trust-checkpoint", action="store_true", help=TRUST_HELP)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plan", help="parameters, memory per GPU and time per epoch, without weights")
    _add_config_args(p)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GiB per GPU (default 80)")
    p.add_argument("--studies", type=int, default=None, help="training studies (default: the shard manifest's)")
    p.add_argument("--mfu", type=float, default=0.40, help="model FLOPs utilisation assumed (default 0.40)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 peak (default H100: 989)")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("generate", help="reports for PNG/JPEG/DICOM files or study folders, from an exported model")
    p.add_argument("inputs", nargs="+", metavar="FILES_OR_FOLDERS",
                   help="image files (one study each) or folders (a folder of images = one study)")
    p.add_argument("--model-dir", required=True, help="an rrg export directory (written from --checkpoint if given)")
    p.add_argument("--checkpoint", default=None, help="a checkpoint directory to export into --model-dir first")
    p.add_argument("--config", default=None, help="run config (default: the export's or the checkpoint's)")
    p.add_argument("--out", default="reports.jsonl", help="output JSONL, one line per study")
    p.add_argument("--labels", action="store_true", help="add CheXpert-14 labels of each generated report")
    p.add_argument("--format", choices=["jsonl", "rexrank"], default="jsonl",
                   help="jsonl (one line per study) or rexrank: ReXrank's prediction JSON {study_id: {..., "
                        "model_prediction}} that `rrg eval --predictions` also reads")
    p.add_argument("--rexrank-input", default=None, metavar="JSON",
                   help="with --format rexrank: the ReXrank test-set JSON; each study's entry is kept and "
                        "model_prediction added (study ids must match the input folders' names)")
    p.add_argument("--batch-size", type=int, default=None, help="default eval.batch_size")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("label", help="clinical labels for reports (CheXpert-14 or PadChest), as CSV")
    p.add_argument("file", help="JSONL with a 'report' field, or text with one report per line")
    p.add_argument("--out", required=True)
    p.add_argument("--explain", action="store_true", help="print, per label, the mention and the rule that decided it")
    p.add_argument("--max-chars", type=int, default=20_000, help="truncate longer reports (counted in the summary)")
    _add_labeler_args(p, "which registered labeler: rrg (English, CheXpert-14), rrg_es (Spanish, PadChest), chexbert")
    p.set_defaults(func=cmd_label)

    p = sub.add_parser("demo-data", help="make the synthetic phantom dataset and its shards")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="shard directory (default data.shards_dir)")
    p.set_defaults(func=cmd_shards_build)

    shards = sub.add_parser("shards", help="build or inspect WebDataset shards").add_subparsers(dest="shards_cmd", required=True)
    p = shards.add_parser("build", help="read a dataset through its adapter and write shards + manifest")
    _add_config_args(p)
    p.add_argument("--out", default=None, help="shard directory (default data.shards_dir)")
    p.set_defaults(func=cmd_shards_build)
    p = shards.add_parser("inspect", help="manifest summary and a rendered sample (PNG)")
    p.add_argument("path", help="shard directory (or its manifest.json)")
    p.add_argument("--out", default=None, help="PNG to write (default <path>/inspect.png)")
    p.add_argument("--index", type=int, default=0, help="which sample of the split")
    p.add_argument("--split", default=None)
    p.set_defaults(func=cmd_shards_inspect)

    bench = sub.add_parser("bench", help="benchmarks printing side-by-side ratios").add_subparsers(dest="bench_cmd", required=True)
    p = bench.add_parser("loader", help="loader samples/s with 0, 1 and 2 workers")
    _add_config_args(p)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batches", type=int, default=40)
    p.set_defaults(func=cmd_bench_loader)
    p = bench.add_parser("train", help="rrg engine vs plain PyTorch step time; loader headroom")
    _add_config_args(p)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--stages", type=int, nargs="+", default=[0, 1, 2, 3], help="ZeRO stages to compare")
    p.add_argument("--no-100m", action="store_true", help="skip the ~100M-parameter, 2-rank measurement")
    p.add_argument("--steps-100m", type=int, default=3, help="timed steps per loop and ZeRO stage (~100M run)")
    p.add_argument("--batch-100m", type=int, default=2, help="micro-batch of the ~100M run")
    p.add_argument("--text-len-100m", type=int, default=32, help="text tokens per row of the ~100M run (+ image tokens)")
    p.add_argument("--profile", type=int, nargs="*", default=[2, 3], metavar="ZERO",
                   help="ZeRO stages to profile function by function (cProfile) on the config model")
    p.set_defaults(func=cmd_bench_train)
    p = bench.add_parser("gpu", help="tokens/s and MFU on one CUDA GPU: full fine-tuning (~1-3B LM + ViT-L), LoRA 7B")
    _add_config_args(p)
    p.add_argument("--case", nargs="+", choices=["full", "lora"], default=["full", "lora"])
    p.add_argument("--lm", default=None, help="LM preset of the full case (default: the largest that fits)")
    p.add_argument("--lora-lm", default="llama-7b", help="LM preset of the LoRA case")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--seq-len", type=int, default=2048, help="LM positions per row (576 image tokens included)")
    p.add_argument("--steps", type=int, default=10, help="timed steps (after --warmup)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--zero", type=int, choices=[2, 3], default=2, help="ZeRO stage")
    p.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s (default: by device name)")
    p.set_defaults(func=cmd_bench_gpu)
    p = bench.add_parser("build", help="shard build rate vs one core x cores; 377k-row planning time and memory")
    _add_config_args(p)
    p.add_argument("--studies", type=int, default=32, help="full-size synthetic MIMIC studies to build")
    p.add_argument("--repeats", type=int, default=5, help="interleaved reference/build rounds (medians printed)")
    p.add_argument("--rows", type=int, default=377_110, help="metadata rows to plan (0: skip)")
    p.add_argument("--no-check-files", action="store_true",
                   help="plan only from the CSVs (skip the check_files: true run over a tree of empty files)")
    p.add_argument("--dir", default=None, help="scratch directory (default: the system temp dir)")
    p.set_defaults(func=cmd_bench_build)

    submit = sub.add_parser("submit", help="submit training to SLURM or Kubernetes").add_subparsers(
        dest="submit_cmd", required=True)
    p = submit.add_parser("slurm", help="write and sbatch one script: Ray on every node, rrg train on the head")
    _add_config_args(p)
    p.add_argument("--nodes", type=int, default=None)
    p.add_argument("--gpus-per-node", type=int, default=None)
    p.add_argument("--cpus-per-node", type=int, default=None)
    p.add_argument("--time", default=None, help="sbatch time limit, e.g. 04:00:00")
    p.add_argument("--partition", default=None)
    p.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    p.set_defaults(func=cmd_submit_slurm)
    p = submit.add_parser("k8s", help="a KubeRay RayJob: validate, then kubectl apply (or print)")
    _add_config_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the validated manifest, apply nothing")
    p.set_defaults(func=cmd_submit_k8s)

    p = bench.add_parser("packing", help="padding efficiency with and without sequence packing (config data, MIMIC-like)")
    _add_config_args(p)
    p.add_argument("--batches", type=int, default=50)
    p.add_argument("--max-len", type=int, default=None, help="default train.packing.max_len")
    p.set_defaults(func=cmd_bench_packing)
    p = bench.add_parser("eval", help="1,000 bootstrap resamples as a multiple of one full scoring pass")
    _add_config_args(p)
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--naive", type=int, default=30, help="naive resamples timed (scaled to --bootstrap)")
    p.set_defaults(func=cmd_bench_eval)
    p = bench.add_parser("checkpoint", help="checkpoint of a ~100M model vs the same bytes written by dd")
    _add_config_args(p)
    p.add_argument("--dir", default=None, help="where both are written (default <output_dir>/bench_checkpoint)")
    p.add_argument("--rounds", type=int, default=2)
    p.set_defaults(func=cmd_bench_checkpoint)

    _add_pass_commands(sub, {"shards": shards, "bench": bench})

    cfg = sub.add_parser("config", help="configuration tools").add_subparsers(dest="config_cmd", required=True)
    p = cfg.add_parser("show", help="print the fully resolved config")
    _add_config_args(p)
    p.set_defaults(func=cmd_config_show)
    return parser


def _add_pass_commands(sub, groups: dict) -> None:
    """Each data pass's own subcommands (shards/passes/), under the group it names."""
    from shards.passes import SHARED_GROUPS, CommandContext, all_passes, resolve

    ctx = CommandContext(load=_load, pool=_pool)
    specs = all_passes()
    helps = {**SHARED_GROUPS, **{g: h for spec in specs for g, h in spec.groups.items()}}
    for spec in specs:
        for command in spec.commands:
            if command.group not in groups:
                groups[command.group] = sub.add_parser(command.group, help=helps.get(command.group)).add_subparsers(
                    dest=f"{command.group}_cmd", required=True)
            p = groups[command.group].add_parser(command.name, help=command.help)
            _add_config_args(p)
            if command.arguments is not None:
                command.arguments(p)
            p.set_defaults(func=lambda args, run=command.run: resolve(run)(args, ctx))


def _known_errors() -> list[tuple[tuple[type, ...], int]]:
    """(error types, exit code): the trainer's table (trainer/runguard.py) plus the cluster floor's."""
    from cluster.errors import ClusterStartError
    from cluster.k8s import ManifestError as RayJobError
    from trainer.runguard import known_errors

    return [*known_errors(), ((RayJobError,), 2), ((ClusterStartError,), 7)]


def _known_error(err: BaseException) -> tuple[int, BaseException | None]:
    """rrg's own error inside ``err`` (also from Ray tasks / Ray Train workers) and its exit code."""
    from cluster.errors import unwrap

    table = _known_errors()
    found = unwrap(err, tuple(t for types, _ in table for t in types))
    if found is None:
        return 1, None
    code = next(c for types, c in table if isinstance(found, types))
    if isinstance(found, ConfigError):
        return code, f"invalid configuration: {found}"
    if isinstance(found, OSError) and found.strerror:  # StorageError: its message, not "[Errno 28] ..."
        return code, found.strerror
    return code, found


def main(argv: list[str] | None = None) -> int:
    from shards.passes import PassImportError

    try:
        parser = build_parser()  # the data passes' commands too (shards/passes/, RRG_PASS_PATH)
    except PassImportError as err:
        print(f"rrg: {err}", file=sys.stderr)
        return 2
    args, extra = parser.parse_known_args(argv)
    # overrides may come after options too: `rrg eval cfg.yaml --checkpoint latest eval.bootstrap=0`
    stray = [a for a in extra if a.startswith("-") or "=" not in a]
    if stray or (extra and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(stray or extra)}")
    if extra:
        args.overrides = list(args.overrides or []) + extra
    t0 = time.time()
    try:
        args.func(args)
    except ConfigError as err:
        print(f"rrg: invalid configuration: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("rrg: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # noqa: BLE001 - clear one-line errors for problems rrg knows
        code, known = _known_error(err)
        if known is None:
            raise
        print(f"rrg: {known}", file=sys.stderr)
        return code
    if os.environ.get("RRG_VERBOSE"):
        print(f"rrg: done in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
