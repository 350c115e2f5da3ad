"""The one prepared GPU check (``scripts/device_check.sh``): fused attention, bf16, MFU, bit-exact resume.

GPU machines lent to this project are rare and short (about 15 minutes a task, no network, 64 MiB of files
carried per call), so the check is one command that installs a pinned wheel set brought along and does
everything in one call, within about 8 minutes, writing ``device_report.json``:

1. **attention**: every kernel the device has (SDPA's flash/cuDNN/efficient backends, PyTorch's varlen,
   FlexAttention compiled, flash-attn when installed) against the eager reference in bf16, on packed rows
   (studies cut by ``cu_seqlens``) and padded rows, forward and gradients;
2. **packed = unpacked**: the same studies' loss through a real model, packed and one per row;
3. **training**: a ~1B Llama-shaped LM (Llama-3.2-1B's shape) + a ViT-L/14-336 tower, 20 steps on one GPU with
   rrg's DeepSpeed strategy at ZeRO-2 and ZeRO-3 bf16, full fine-tuning and LoRA: tokens/s, MFU (FLOPs formula
   of trainer/bench/gpu.py, printed with its numbers), peak memory, LoRA/full tokens/s on the same model, and
   the step time of the packed varlen kernel against SDPA with a dense block-diagonal mask;
4. **resume**: `rrg train` (torchrun backend, one GPU) on tiny shards built here, checkpoint at step 3,
   resumed in a new process: steps 4-6 equal the uninterrupted run's bit for bit.

``--fetch`` (a CPU machine with package access) downloads the wheels for the device's Python into ``.whl/device``
(ignored by git) and writes ``scripts/device_wheels.lock.json`` (name, size, sha256); ``--dry-run`` prints the
plan and the wheel set's size from that lock (a test runs it); without flags, on the device, it installs the
wheels (no network) and runs the checks.  ``--device cpu`` runs the same checks at tiny sizes on CPU (a smoke
test of the code; no MFU).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parent.parent
WHEEL_DIR = ROOT / ".whl" / "device"
REQUIREMENTS = ROOT / "scripts" / "device_wheels.txt"
LOCK = ROOT / "scripts" / "device_wheels.lock.json"
BUDGET_MIB = 60.0
DEVICE_PYTHON = ("3.12", "cp312")  # the lent GPU machine's Python (its device README)
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
TIME_LIMIT_S = 8 * 60

PLAN = [
    ("install", "pip install --no-index --no-deps the carried wheels (.whl/device)", 20),
    ("attention", "SDPA flash/cuDNN/efficient, torch varlen, FlexAttention (compiled), flash-attn if installed "
                  "vs eager, bf16, packed + padded rows, forward + gradients", 60),
    ("packed_vs_unpacked", "one real model's loss on the same studies, packed and one per row", 15),
    ("train", "llama-1b + ViT-L/14-336, 20 steps each: ZeRO-2 full, ZeRO-2 LoRA, ZeRO-3 full, ZeRO-3 LoRA, "
              "ZeRO-2 full packed (varlen) vs packed (dense-mask SDPA)", 240),
    ("resume", "rrg train (torchrun, 1 GPU) 6 steps vs 3 + resume 3: bit-exact", 90),
    ("report", "device_report.json", 1),
]


# ---- the wheel set --------------------------------------------------------------------------------
def requirements() -> list[str]:
    return [ln.split("#", 1)[0].strip() for ln in REQUIREMENTS.read_text().splitlines()
            if ln.split("#", 1)[0].strip()]


def fetch(dest: Path = WHEEL_DIR) -> dict[str, Any]:
    """Download the device's wheels (binary, for its Python and platform) and build deepspeed's (it is
    source-only on PyPI; its wheel is pure Python); write the lock.  Needs package access."""
    dest.mkdir(parents=True, exist_ok=True)
    reqs = requirements()
    source_only = [r for r in reqs if r.startswith("deepspeed")]
    binary = [r for r in reqs if r not in source_only]
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    cmd = pip + ["download", "--no-deps", "--only-binary=:all:", "--python-version", DEVICE_PYTHON[0],
                 "--implementation", "cp", "--abi", DEVICE_PYTHON[1], "--abi", "abi3", "--abi", "none",
                 *[a for p in PLATFORMS for a in ("--platform", p)], "--platform", "any", "-d", str(dest), *binary]
    subprocess.run(cmd, check=True)
    for req in source_only:
        subprocess.run(pip + ["wheel", "--no-deps", "-w", str(dest), req], check=True)
    return write_lock(dest)


def write_lock(dest: Path = WHEEL_DIR) -> dict[str, Any]:
    files = sorted(p for p in dest.glob("*.whl"))
    lock = {"python": DEVICE_PYTHON[0], "requirements": requirements(),
            "wheels": [{"file": p.name, "bytes": p.stat().st_size,
                        "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files]}
    lock["total_bytes"] = sum(w["bytes"] for w in lock["wheels"])
    LOCK.write_text(json.dumps(lock, indent=1) + "\n")
    return lock


def wheel_set() -> dict[str, Any]:
    """The lock, checked: one wheel per requirement, the total within the budget, local files (if any) intact."""
    if not LOCK.is_file():
        raise SystemExit(f"device check: no {LOCK.relative_to(ROOT)}: run `scripts/device_check.sh --fetch` on a "
                         f"machine with package access first")
    lock = json.loads(LOCK.read_text())
    names = {_project(w["file"]) for w in lock["wheels"]}
    missing = [r for r in requirements() if _project(r) not in names]
    if missing:
        raise SystemExit(f"device check: the lock has no wheel for {missing}: run --fetch again")
    total = sum(w["bytes"] for w in lock["wheels"])
    if total > BUDGET_MIB * 2**20:
        raise SystemExit(f"device check: the wheel set is {total / 2**20:.1f} MiB, over {BUDGET_MIB:g} MiB")
    bad = []
    for w in lock["wheels"]:
        f = WHEEL_DIR / w["file"]
        if f.is_file() and hashlib.sha256(f.read_bytes()).hexdigest() != w["sha256"]:
            bad.append(w["file"])
    if bad:
        raise SystemExit(f"device check: {bad} in {WHEEL_DIR} differ from the lock")
    return {**lock, "total_bytes": total}


def _project(name: str) -> str:
    """Normalised project name of a wheel file or a requirement line."""
    import re

    base = re.split(r"[=<>!~ ;\[]", name, 1)[0] if not name.endswith(".whl") else name.split("-", 1)[0]
    return re.sub(r"[-_.]+", "-", base).lower()


def dry_run() -> int:
    lock = wheel_set()
    print(f"device check plan (budget {TIME_LIMIT_S // 60} min on the device; ~{sum(s for *_, s in PLAN)} s):")
    for name, what, seconds in PLAN:
        print(f"  {name:<20} ~{seconds:>4} s  {what}")
    print(f"wheel set for Python {lock['python']}: {len(lock['wheels'])} wheels, "
          f"{lock['total_bytes'] / 2**20:.1f} MiB (budget {BUDGET_MIB:g} MiB):")
    for w in lock["wheels"]:
        print(f"  {w['file']:<70} {w['bytes'] / 2**20:6.2f} MiB")
    present = all((WHEEL_DIR / w["file"]).is_file() for w in lock["wheels"])
    print(f"{WHEEL_DIR.relative_to(ROOT)}: {'all wheels present' if present else 'not fetched here'}; carry it "
          f"with the working tree: run(command='scripts/device_check.sh', carry=['.whl/device'])")
    return 0


def install(dest: Path = WHEEL_DIR) -> None:
    wheels = [str(dest / w["file"]) for w in wheel_set()["wheels"]]
    missing = [w for w in wheels if not Path(w).is_file()]
    if missing:
        raise SystemExit(f"device check: {len(missing)} wheels not carried ({Path(missing[0]).name} ...): "
                         f"carry .whl/device")
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-index", "--no-deps", "--disable-pip-version-check",
                    "-q", *wheels], check=True)


# ---- the checks -------------------------------------------------------------------------------------
def attention_checks(device, dtype) -> list[dict[str, Any]]:
    """Each available kernel vs the eager reference on packed and padded rows: forward and input gradients."""
    import torch

    from modeling.attention import VARLEN, eager_attention, flash_available, flex_available, \
        torch_varlen_available, varlen_attention
    from modeling.packing import segment_attention_mask, varlen_kwargs

    g = torch.Generator().manual_seed(0)
    seg = torch.zeros(2, 256, dtype=torch.long)
    seg[0, :100], seg[0, 100:230] = 1, 2
    seg[1, :61], seg[1, 61:200], seg[1, 200:256] = 1, 2, 3
    heads, kv, dim = 8, 4, 64
    q = torch.randn(2, heads, 256, dim, generator=g)
    k, v = (torch.randn(2, kv, 256, dim, generator=g) for _ in range(2))
    real = (seg.flatten() > 0).to(device)

    def flat(t):
        return t.transpose(1, 2).reshape(-1, t.shape[1], t.shape[3])

    ref_in = [t.to(device).double().requires_grad_() for t in (q, k, v)]
    ref = flat(eager_attention(*ref_in, causal=False, attn_mask=segment_attention_mask(seg).to(device)))
    ref_grad = torch.autograd.grad((ref[real] ** 2).sum(), ref_in)
    kw = varlen_kwargs(seg.to(device))
    backends = ["segments"]
    if device.type == "cuda":
        backends += [b for b, ok in (("torch_varlen", torch_varlen_available()), ("flex", flex_available()),
                                     ("flash_attn", flash_available(device))) if ok]
    out = []
    for backend in backends:
        assert backend in VARLEN
        x = [t.to(device, dtype).requires_grad_() for t in (q, k, v)]
        t0 = time.perf_counter()
        try:
            got = varlen_attention(*(flat(t) for t in x), kw["cu_seq_lens_q"], kw["max_length_q"], causal=True,
                                   scale=None, backend=backend)
            grads = torch.autograd.grad((got.float()[real] ** 2).sum(), x)
        except Exception as err:  # a kernel the device cannot run: reported, not fatal
            out.append({"layout": "packed", "backend": backend, "ok": False, "error": f"{type(err).__name__}: {err}"[:300]})
            continue
        err_out = float((got.double()[real] - ref[real]).abs().max())
        err_grad = max(float((a.double() - b).abs().max()) for a, b in zip(grads, ref_grad))
        scale = float(ref[real].abs().max())
        tol = 2e-2 if dtype != torch.float32 else 1e-5
        out.append({"layout": "packed", "backend": backend, "dtype": str(dtype).replace("torch.", ""),
                    "max_abs_err": err_out, "max_abs_grad_err": err_grad, "ok": err_out <= tol * max(scale, 1.0),
                    "seconds": round(time.perf_counter() - t0, 3)})
    # padded (right-padded) rows: causal attention alone against the masked reference, on the real tokens
    mask = torch.ones(2, 256, dtype=torch.bool)
    mask[1, 180:] = False
    keep = mask[:, None, :, None].to(device)
    ref_pad = eager_attention(*(t.to(device).double() for t in (q, k, v)), causal=True,
                              attn_mask=mask[:, None, None, :].to(device))
    x = [t.to(device, dtype) for t in (q, k, v)]
    got = torch.nn.functional.scaled_dot_product_attention(x[0], x[1], x[2], is_causal=True, enable_gqa=True)
    err = float(((got.double() - ref_pad) * keep).abs().max())
    out.append({"layout": "padded", "backend": "sdpa_causal", "dtype": str(dtype).replace("torch.", ""),
                "max_abs_err": err, "ok": err <= (2e-2 if dtype != torch.float32 else 1e-5) * max(float(ref_pad.abs().max()), 1.0)})
    return out


def packed_vs_unpacked(device, dtype) -> dict[str, Any]:
    """The same studies' mean loss, packed and one per row, through a real model (the demo's tiny family)."""
    import torch

    from modeling.family import build_family
    from modeling.packing import pack_batch
    from trainer.config import load_config
    from trainer.bench.gpu import _tokenizer

    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"))
    family = build_family(cfg.model)
    tok = _tokenizer(family)
    torch.manual_seed(0)
    model = family.build_model(tok).to(device, dtype).eval()
    g = torch.Generator().manual_seed(1)
    n, text = 6, 40
    ids = torch.randint(5, len(tok), (n, text), generator=g)
    ids[:, 0] = model.image_token_id
    lengths = [text - 3 * i for i in range(n)]
    mask = torch.zeros(n, text, dtype=torch.long)
    for i, L in enumerate(lengths):
        mask[i, :L] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, 0] = -100
    batch = {"pixel_values": torch.randn(n, 3, 32, 32, generator=g), "input_ids": ids, "attention_mask": mask,
             "labels": labels, "sample_weight": torch.ones(n)}
    packed = pack_batch(batch, 2 * text + 2 * int(model.vision.num_patches), model.image_token_id,
                        int(model.vision.num_patches))
    packed.pop("lm_positions")

    def loss(b):
        b = {k: (v.to(device, dtype) if v.is_floating_point() and k != "sample_weight" else v.to(device))
             for k, v in b.items() if torch.is_tensor(v)}
        with torch.no_grad():
            return float(model(**b).loss)

    a, b = loss(batch), loss(packed)
    tol = 2e-2 if dtype != torch.float32 else 1e-5
    return {"loss_unpacked": a, "loss_packed": b, "abs_diff": abs(a - b), "rows_packed": int(packed["input_ids"].shape[0]),
            "ok": abs(a - b) <= tol * max(abs(a), 1.0)}


def training(device, quick: bool) -> list[dict[str, Any]]:
    """The timed cases of trainer/bench/gpu.py's real training step (ZeRO-2/3, full/LoRA, packed kernels)."""
    import gc

    import torch

    from trainer.config import load_config
    from trainer.bench.gpu import Case, mfu, peak_flops, report, run_case

    cfg = load_config(str(ROOT / "configs" / "demo.yaml"))
    lm, vision = ("tiny", "tiny") if quick else ("llama-1b", "vit-l")
    rows, seq, steps = (2, 128, 2) if quick else (8, 2048, 20)  # quick: 4 packed studies of 32 > 16 patches
    peak = peak_flops(torch.cuda.get_device_name(0)) if device.type == "cuda" else None
    cases = [("full", 2, 0, None), ("lora", 2, 0, None), ("full", 3, 0, None), ("lora", 3, 0, None),
             ("full", 2, 4, "auto"), ("full", 2, 4, "sdpa")]
    out = []
    for mode, zero, packed, attention in cases:
        case = Case(mode, lm, vision=vision, micro_batch=rows, seq_len=seq, zero_stage=zero, train_vision=False)
        t0 = time.perf_counter()
        try:
            res = run_case(cfg, case, device=device.type, precision="bf16", steps=steps, warmup=2 if quick else 3,
                           packed=packed, attention=attention)
        except Exception as err:
            out.append({"mode": mode, "zero": zero, "packed": packed, "attention": attention, "ok": False,
                        "error": f"{type(err).__name__}: {err}"[:400]})
            continue
        flops = res.flops.per_step(case.micro_batch)
        row = {"mode": mode, "zero": zero, "packed": packed, "attention": res.attention, "ok": True,
               "lm": lm, "params": res.params, "step_s": res.step_s, "tokens_per_s": res.tokens_per_s,
               "flops_per_step": flops, "mfu": mfu(flops, res.step_s, peak) if peak else None,
               "peak_memory_gib": res.peak_memory / 2**30 if res.peak_memory else None,
               "formula": res.flops.formula(case.micro_batch), "seconds": round(time.perf_counter() - t0, 1)}
        print("\n".join(report(res, peak)), flush=True)
        out.append(row)
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def resume_check(device, work: Path, steps: int = 6) -> dict[str, Any]:
    """`rrg train` (torchrun backend) on tiny shards: 6 steps vs 3 + resume 3, losses bit for bit."""
    from configs.parallel import SerialPool
    from shards.writer import build_from_config
    from trainer.config import load_config

    work.mkdir(parents=True, exist_ok=True)
    gpu = "true" if device.type == "cuda" else "false"
    common = [f"data.shards_dir={work / 'shards'}", f"cluster.use_gpu={gpu}", "cluster.num_workers=1",
              "cluster.backend=torchrun", f"train.max_steps={steps}", "checkpoint.every_steps=3",
              "checkpoint.keep_last=3", f"train.precision={'bf16' if device.type == 'cuda' else 'fp32'}"]
    cfg = load_config(str(ROOT / "configs" / "tiny.yaml"), common)
    build_from_config(cfg.data, seed=cfg.seed, pool=SerialPool())
    env = dict(os.environ, WANDB_MODE="disabled")

    def train(out: Path, *extra: str) -> dict[int, float]:
        proc = subprocess.run([sys.executable, "-m", "launcher.cli", "train", str(ROOT / "configs" / "tiny.yaml"),
                               *common, f"output_dir={out}", *extra], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"rrg train failed ({proc.returncode}): {proc.stderr[-1500:]}")
        losses = {}
        for line in (out / "train_log.jsonl").read_text().splitlines():
            rec = json.loads(line)
            if set(rec) == {"step", "loss"}:
                losses[rec["step"]] = rec["loss"]
        return losses

    full = train(work / "full")
    resumed = train(work / "resumed", f"checkpoint.resume={work / 'full' / 'checkpoints' / 'step_0000003'}")
    later = sorted(s for s in resumed if s > 3)
    same = bool(later) and all(resumed[s] == full[s] for s in later)
    return {"steps_compared": later, "full": [full[s] for s in later], "resumed": [resumed[s] for s in later],
            "bit_exact": same, "ok": same}


def run_checks(device_name: str, out: Path, quick: bool) -> dict[str, Any]:
    import torch

    start = time.time()
    device = torch.device(device_name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("device check: no CUDA device here (use --device cpu for the CPU smoke run)")
    os.environ["DS_ACCELERATOR"] = "cuda" if device.type == "cuda" else "cpu"
    dtype = torch.bfloat16
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu",
                              "torch": torch.__version__, "cuda": torch.version.cuda, "started": time.ctime()}
    try:
        import transformers

        report["transformers"] = transformers.__version__
    except ImportError:
        pass
    from trainer.strategy import DeepSpeedStrategy, single_process_env

    if device.type == "cuda":
        torch.cuda.set_device(0)
    single_process_env()
    DeepSpeedStrategy.init_distributed(device.type == "cuda")
    steps = [("attention", lambda: attention_checks(device, dtype)),
             ("packed_vs_unpacked", lambda: packed_vs_unpacked(device, dtype)),
             ("train", lambda: training(device, quick)),
             ("resume", lambda: resume_check(device, out.parent / "device_check_work"))]
    for name, fn in steps:
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as err:  # every step reports; one failing does not hide the others
            report[name] = {"ok": False, "error": f"{type(err).__name__}: {err}"[:600]}
        print(f"device check: {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
        out.write_text(json.dumps(report, indent=1, default=str))
    report.update(summary(report), seconds=round(time.time() - start, 1))
    out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report["summary"], indent=1), flush=True)
    return report


def summary(report: dict[str, Any]) -> dict[str, Any]:
    """The figures the README quotes: MFU full / LoRA, LoRA/full tokens/s, varlen vs dense-mask step time."""
    rows = [r for r in report.get("train", []) if isinstance(r, dict) and r.get("ok")]

    def pick(mode, zero, packed=0, attention=None):
        for r in rows:
            if r["mode"] == mode and r["zero"] == zero and r["packed"] == packed and \
                    (attention is None or attention in r["attention"]):
                return r
        return None

    s: dict[str, Any] = {}
    for zero in (2, 3):
        full, lora = pick("full", zero), pick("lora", zero)
        if full and lora:
            s[f"zero{zero}"] = {"mfu_full": full["mfu"], "mfu_lora": lora["mfu"],
                                "tokens_per_s_full": full["tokens_per_s"], "tokens_per_s_lora": lora["tokens_per_s"],
                                "lora_over_full_tokens_per_s": lora["tokens_per_s"] / full["tokens_per_s"],
                                "peak_memory_gib_full": full["peak_memory_gib"]}
    varlen = next((r for r in rows if r["packed"] and "sdpa_mask" not in r["attention"]), None)
    dense = next((r for r in rows if r["packed"] and "sdpa_mask" in r["attention"]), None)
    if varlen and dense:
        s["packed_step_s_varlen_over_dense_sdpa"] = varlen["step_s"] / dense["step_s"]
        s["packed_varlen_kernel"] = varlen["attention"]
    res = report.get("resume", {})
    s["resume_bit_exact"] = bool(res.get("bit_exact"))
    att = report.get("attention", [])
    s["attention_ok"] = bool(att) and all(a.get("ok") for a in att if isinstance(a, dict))
    s["packed_equals_unpacked"] = bool(report.get("packed_vs_unpacked", {}).get("ok"))
    return {"summary": s}


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/device_check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="print the plan and the wheel set's size; run nothing")
    p.add_argument("--fetch", action="store_true", help="download/build the wheel set into .whl/device + the lock")
    p.add_argument("--no-install", action="store_true", help="the wheels are installed already")
    p.add_argument("--device", default="cuda", help="cuda (the GPU machine) or cpu (a tiny smoke run)")
    p.add_argument("--out", default=os.environ.get("OUT", "."), help="directory for device_report.json ($OUT)")
    args = p.parse_args(argv)
    if args.fetch:
        lock = fetch()
        print(f"fetched {len(lock['wheels'])} wheels, {lock['total_bytes'] / 2**20:.1f} MiB -> {WHEEL_DIR}")
        return dry_run()
    if args.dry_run:
        return dry_run()
    if args.device == "cuda" and not args.no_install:
        install()
    out = Path(args.out) / "device_report.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    report = run_checks(args.device, out, quick=args.device != "cuda")
    print(f"device check: wrote {out} in {report['seconds']:.0f} s")
    ok = report["summary"]
    return 0 if ok.get("attention_ok") and ok.get("packed_equals_unpacked") and ok.get("resume_bit_exact") else 1


if __name__ == "__main__":
    sys.exit(main())
