"""Benchmarks' arithmetic and plumbing (issue 13): GPU FLOPs / MFU accounting, the no-CUDA exit,
the GPU bench's step on CPU, and the engine bench's plain loop using rrg's optimizer settings."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from trainer.bench import gpu as gb

ROOT = Path(__file__).resolve().parent.parent


def test_flop_count_full_fine_tuning_by_hand():
    f = gb.FlopCount(mode="full", lm_params=1000, lm_layers=2, lm_attn_dim=8, seq_len=16,
                     vis_params=100, vis_layers=1, vis_attn_dim=4, vis_tokens=5, vis_trained=True,
                     proj_params=10, image_tokens=4)
    assert f.lm_per_token() == 6 * 1000 + 12 * 2 * 8 * 16  # 6N + 12 L d T = 9072
    assert f.vision_per_image() == 5 * (6 * 100 + 12 * 1 * 4 * 5)  # P (6 N_v + 12 L_v d_v P) = 4200
    assert f.projector_per_image() == 6 * 10 * 4
    assert f.per_step(rows=3) == 3 * 16 * 9072 + 3 * (4200 + 240)
    lines = f.formula(rows=3)
    assert "6 x 1000 + 12 x 2 x 8 x 16 = 9072" in lines[0]
    assert f"= {f.per_step(3):.4g} FLOPs" in lines[3]


def test_flop_count_lora_and_frozen_vision_by_hand():
    f = gb.FlopCount(mode="lora", lm_params=1000, lm_layers=2, lm_attn_dim=8, seq_len=16, lora_params=7,
                     vis_params=100, vis_layers=1, vis_attn_dim=4, vis_tokens=5, vis_trained=False)
    assert f.lm_per_token() == 4 * 1000 + 6 * 7 + 12 * 2 * 8 * 16  # 4N + 6 N_lora + attention
    assert f.vision_per_image() == 5 * (2 * 100 + 4 * 1 * 4 * 5)  # forward only
    assert "(frozen: forward only)" in f.formula(rows=1)[1]


def test_mfu_and_peak_table():
    assert gb.mfu(flops_per_step=4.5e14, seconds_per_step=1.0, peak=1e15) == pytest.approx(0.45)
    assert gb.peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert gb.peak_flops("NVIDIA H100 PCIe") == 756e12  # not the SXM figure
    assert gb.peak_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gb.peak_flops("NVIDIA GeForce GTX 1080") is None


@pytest.mark.parametrize("name", ["llama-1b", "llama-3b", "llama-7b", "tiny"])
def test_llama_parameter_formula_matches_the_built_model(name):
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):  # shapes only: no memory, no init time
        model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**gb.LM_COMMON, **gb.LM_PRESETS[name]))
    assert sum(p.numel() for p in model.parameters()) == gb.llama_params(gb.LM_PRESETS[name])


@pytest.mark.parametrize("name", ["vit-l", "tiny"])
def test_vit_parameter_formula_matches_the_built_model(name):
    from transformers import AutoConfig, AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.for_model(**gb.VISION_PRESETS[name]))
    assert sum(p.numel() for p in model.parameters()) == gb.vit_params(gb.VISION_PRESETS[name])


def test_count_flops_of_a_family_model_excludes_lookups_and_unused_parts():
    from modeling.family import build_family
    from modeling.tuning import apply_tuning
    from trainer.config import load_config

    case = gb.Case("full", "tiny", vision="tiny", micro_batch=2, seq_len=40)
    cfg = gb.case_config(load_config(str(ROOT / "configs" / "tiny.yaml"), []), case, "fp32")
    family = build_family(cfg.model)
    model = family.build_model(gb._tokenizer(family))
    apply_tuning(model, family, cfg.train.resolved_stages()[0].spec(cfg.train.lora))
    f = gb.count_flops(model, "full", case.seq_len, vis_trained=True)
    lm, vis = gb.LM_PRESETS["tiny"], gb.VISION_PRESETS["tiny"]
    d, dv = lm["hidden_size"], vis["hidden_size"]
    tokens = (vis["image_size"] // vis["patch_size"]) ** 2 + 1
    assert f.lm_params == gb.llama_params(lm) - 32000 * d  # untied: the input embedding is a lookup
    assert f.vis_params == gb.vit_params(vis) - tokens * dv - 2 * dv  # minus position lookup, post-layernorm
    assert (f.vis_tokens, f.image_tokens, f.lm_attn_dim, f.lm_layers) == (tokens, tokens - 1, d, 2)


def test_pick_lm_takes_the_largest_that_fits():
    case = gb.Case("full", "llama-3b")
    assert gb.pick_lm(80 * 2**30, case) == "llama-3b"
    assert gb.pick_lm(40 * 2**30, case) == "llama-1b"
    from configs.schema import ConfigError

    with pytest.raises(ConfigError, match="lower --micro-batch"):
        gb.pick_lm(8 * 2**30, case)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the command would run the benchmark")
def test_bench_gpu_without_cuda_exits_2_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "bench", "gpu", str(ROOT / "configs" / "demo.yaml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines == ["rrg: bench gpu needs a CUDA GPU (torch.cuda.is_available() is False on this machine)"]
    assert proc.stdout == ""


CPU_STEP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=sys.argv[1], RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    import torch
    torch.set_num_threads(1)
    from trainer.config import load_config
    from trainer.strategy import DeepSpeedStrategy, build_ds_config, torch_adamw_kwargs
    from trainer.bench import gpu as gb
    DeepSpeedStrategy.init_distributed(False)
    cfg = load_config("configs/tiny.yaml", [])
    out = {}
    for name, zero in (("full", 2), ("lora", 3)):
        case = gb.Case(name, "tiny", vision="tiny", micro_batch=2, seq_len=40, zero_stage=zero)
        res = gb.run_case(cfg, case, device="cpu", precision="fp32", steps=2, warmup=1)
        out[name] = {"tokens_per_s": res.tokens_per_s, "step_s": res.step_s, "trainable": res.params["trainable"],
                     "flops": res.flops.per_step(2), "lm": res.flops.lm_params, "lora": res.flops.lora_params,
                     "report": gb.report(res, 1e12)}
    # the engine bench's plain loop gets exactly the optimizer arguments DeepSpeed gave torch
    strategy = DeepSpeedStrategy(cfg.train, world_size=1, rank=0, use_gpu=False)
    strategy.setup(torch.nn.Linear(4, 4))
    group = strategy.engine.optimizer.optimizer.param_groups[0]
    kwargs = torch_adamw_kwargs(build_ds_config(cfg.train, 1))
    group = dict(group, lr=group["initial_lr"])  # the LR schedule has already scaled "lr"
    out["optimizer"] = {k: [group[k] == v, str(v)] for k, v in kwargs.items()}
    print("RESULT " + json.dumps(out))
""")


def test_gpu_bench_step_and_engine_bench_optimizer_on_cpu(tmp_path):
    script = tmp_path / "step.py"
    script.write_text(CPU_STEP_SCRIPT)
    proc = subprocess.run([sys.executable, str(script), "29431"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(next(l for l in proc.stdout.splitlines() if l.startswith("RESULT "))[7:])
    full, lora = out["full"], out["lora"]
    for r in (full, lora):
        assert r["tokens_per_s"] == pytest.approx(2 * 40 / r["step_s"])
        assert r["flops"] > 0 and any(line.strip().startswith("MFU = ") for line in r["report"])
    assert lora["lm"] == full["lm"] and lora["lora"] > 0 and lora["trainable"] < full["trainable"]
    opt = out["optimizer"]
    assert opt["fused"] == [True, "True"] and all(same for same, _ in opt.values()), opt
