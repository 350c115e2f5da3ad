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


def cmd_config_show(args):
    import yaml

    print(yaml.safe_dump(_load(args).to_dict(), sort_keys=False), end="")


def cmd_shards_build(args):
    from shards.writer import build_from_config

    cfg = _load(args)
    manifest = build_from_config(cfg.data, seed=cfg.seed, out_dir=args.out, pool=_pool(cfg))
    print(f"shards: {manifest.root}  studies: {manifest.splits}  fingerprint: {manifest.fingerprint[:16]}")


def cmd_shards_inspect(args):
    from shards.inspect import inspect_shards

    inspect_shards(args.path, out_png=args.out, index=args.index, split=args.split)


def cmd_bench_loader(args):
    from shards.bench import bench_loader

    bench_loader(_load(args), workers=args.workers, batches=args.batches)


def cmd_bench_train(args):
    from trainer.bench import bench_train

    bench_train(_load(args), steps=args.steps, repeats=args.repeats, stages=tuple(args.stages), big=not args.no_100m,
                big_steps=args.steps_100m)


def cmd_bench_packing(args):
    from trainer.packing_bench import bench_packing

    bench_packing(_load(args), batches=args.batches, max_len=args.max_len)


def cmd_bench_eval(args):
    from trainer.eval_bench import bench_eval

    bench_eval(_load(args), bootstrap=args.bootstrap, naive=args.naive)


def cmd_bench_checkpoint(args):
    from trainer.ckpt_bench import bench_checkpoint

    bench_checkpoint(_load(args), directory=args.dir, rounds=args.rounds)


def cmd_train(args):
    cfg = _load(args)  # validate before anything heavy is imported or started
    if args.resume is not None:
        cfg.checkpoint.resume = args.resume
    if cfg.cluster.backend == "torchrun":
        from cluster.torchrun import run_training as torchrun_training

        config, overrides = _split_config(args)
        extra = [f"checkpoint.resume={args.resume}"] if args.resume is not None else []
        rc = torchrun_training(cfg, config, overrides + extra)
        if rc:
            raise SystemExit(rc)
        return
    from cluster.ray_train import run_training

    run_training(cfg, address=args.address or cfg.cluster.address or os.environ.get("RAY_ADDRESS"))


def cmd_eval(args):
    from trainer.evaluate import run_eval, score_predictions_file

    if args.predictions:
        if not args.out:
            raise ConfigError("--out", "scoring a predictions file needs --out DIR")
        score_predictions_file(args.predictions, args.out, bootstrap=args.bootstrap)
        return
    cfg = _load(args)
    run_eval(cfg, pool=_pool(cfg, args.address), checkpoint=args.checkpoint, model_dir=args.model_dir,
             out=args.out, image_ablation=args.image_ablation)


def cmd_plan(args):
    from modeling.config import without_path_checks
    from trainer.plan import run_plan

    with without_path_checks():  # real-scale configs name model directories that need not exist here
        cfg = _load(args)
    run_plan(cfg, gpus=args.gpus, nodes=args.nodes, gpu_memory=args.gpu_memory, studies=args.studies,
             mfu=args.mfu, peak_tflops=args.peak_tflops)


def cmd_label(args):
    from trainer.labeler import label_file

    label_file(args.file, args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rrg", description="radiology report generation: data, training, evaluation")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model (Ray + DeepSpeed)")
    _add_config_args(p)
    p.add_argument("--address", help="join this Ray cluster instead of starting a local one (or RAY_ADDRESS)")
    p.add_argument("--resume", help="auto | none | checkpoint path (overrides checkpoint.resume)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="generate reports and score them")
    _add_config_args(p)
    p.add_argument("--checkpoint", default=None, help="checkpoint dir or 'latest'")
    p.add_argument("--model-dir", default=None, help="an exported Hugging Face model directory")
    p.add_argument("--predictions", default=None, help="score this predictions JSONL instead of generating")
    p.add_argument("--out", default=None, help="output directory")
    p.add_argument("--image-ablation", default=None, metavar="KIND",
                   help="generate again with inputs blanked: black | shuffle, plus the family's own "
                        "(radixpert: masks; llava_ta: segment; r2genkg: kg) - reports the drop per metric")
    p.add_argument("--bootstrap", type=int, default=1000)
    p.add_argument("--address", default=None)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("plan", help="parameters, memory per GPU and time per epoch, without weights")
    _add_config_args(p)
    p.add_argument("--gpus", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpu-memory", type=float, default=80.0, help="GB per GPU (default 80)")
    p.add_argument("--studies", type=int, default=None, help="training studies (default: the shard manifest's)")
    p.add_argument("--mfu", type=float, default=0.40, help="model FLOPs utilisation assumed (default 0.40)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="GPU bf16 peak (default H100: 989)")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("label", help="CheXpert-14 labels for reports, as CSV")
    p.add_argument("file", help="JSONL with a 'report' field, or text with one report per line")
    p.add_argument("--out", required=True)
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
    p.add_argument("--steps-100m", type=int, default=4)
    p.set_defaults(func=cmd_bench_train)
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

    cfg = sub.add_parser("config", help="configuration tools").add_subparsers(dest="config_cmd", required=True)
    p = cfg.add_parser("show", help="print the fully resolved config")
    _add_config_args(p)
    p.set_defaults(func=cmd_config_show)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
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
    except Exception as err:  # noqa: BLE001 - clear one-line errors for known data problems
        from shards.manifest import ManifestError

        known = (ManifestError,)
        try:
            from shards.reader import DataError

            known += (DataError,)
        except ImportError:
            pass
        if isinstance(err, known):
            print(f"rrg: {err}", file=sys.stderr)
            return 3
        raise
    if os.environ.get("RRG_VERBOSE"):
        print(f"rrg: done in {time.time() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
