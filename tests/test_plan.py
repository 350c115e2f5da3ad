"""`rrg plan`: every real-scale config is planned on the meta device; trainable counts match the papers."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from modeling.config import without_path_checks
from trainer.config import load_config
from trainer.plan import model_state_bytes, plan_stages, run_plan

ROOT = Path(__file__).resolve().parent.parent
REAL_SCALE = [p for p in sorted((ROOT / "configs").glob("*.yaml")) if
              p.stem not in ("demo", "tiny") and not p.stem.endswith("_demo")]


def _cfg(path, *overrides):
    with without_path_checks():
        return load_config(path, list(overrides))


@pytest.mark.parametrize("path", REAL_SCALE, ids=lambda p: p.name)
def test_every_real_scale_config_is_planned(path):
    out = run_plan(_cfg(path), gpus=8, studies=200_000)
    assert out["stages"] and all(s["trainable"] > 0 and s["hours_per_epoch"] > 0 for s in out["stages"])


def test_radixpert_trains_about_126m_parameters():
    """Paper: ~126M trainable (MLP + 1x1 conv + LoRA); tolerance 3%."""
    (stage,), _ = plan_stages(_cfg(ROOT / "configs" / "radixpert_medgemma4b.yaml"))
    rows = {name: (total, train) for name, total, train in stage.rows}
    assert set(n for n, (_, t) in rows.items() if t) == {"projector", "mask_branch", "lora"}
    assert abs(stage.trainable - 126e6) / 126e6 < 0.03, stage.trainable
    # LoRA on q/k/v/o in closed form: r x (in + out) per projection, 34 layers
    h, q, kv, r = 2560, 8 * 256, 4 * 256, 208
    assert rows["lora"][1] == 34 * r * ((h + q) + 2 * (h + kv) + (q + h))


def test_llava_rad_7b_counts_in_closed_form():
    align, full = plan_stages(_cfg(ROOT / "configs" / "llava_rad_7b.yaml"))[0]
    proj = 768 * 4096 + 4096 + 4096 * 4096 + 4096
    assert align.trainable == proj and full.trainable == proj + full.lm_params
    assert 6.7e9 < full.lm_params < 6.8e9  # Vicuna-7B (Llama-2 7B architecture)


def test_model_state_plan_equals_measured_bytes_on_the_tiny_model():
    """fp32 AdamW on the tiny demo model: weights 4P + grads 4T + optimizer 8T, byte for byte."""
    from modeling.family import build_family
    from modeling.tuning import apply_tuning

    cfg = load_config(ROOT / "configs" / "tiny.yaml", ["train.tuning=lora", "train.train_vision=false"])
    fam = build_family(cfg.model)
    tok = fam.tokenizer(["no acute findings. heart size normal."] * 8)
    model = fam.build_model(tok)
    apply_tuning(model, fam, cfg.train.resolved_stages()[0].spec(cfg.train.lora))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-3)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    measured = {"weights": sum(p.numel() * p.element_size() for p in model.parameters()),
                "gradients": sum(p.grad.numel() * p.grad.element_size() for p in params),
                "optimizer": sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                                 if torch.is_tensor(v) and v.ndim > 0)}
    total, train = sum(p.numel() for p in model.parameters()), sum(p.numel() for p in params)
    planned = model_state_bytes(total, train, zero=0, n=1, bf16=False, offload_opt=False, offload_params=False)
    assert planned == measured


def test_plan_cli_runs_in_seconds_and_prints_the_formulas():
    proc = subprocess.run([sys.executable, "-m", "launcher.cli", "plan", "configs/llava_rad_7b.yaml", "--gpus", "8",
                           "--studies", "227000"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "FLOPs/step = global_batch x (seq x (6 x N_lm" in proc.stdout and "time per epoch" in proc.stdout
    assert "memory/GPU, activation checkpointing on" in proc.stdout


def test_llava_ta_lora_r128_in_closed_form():
    """LoRA r=128 on every linear layer of Vicuna-7B: r x (in + out) per layer, 32 layers."""
    _, lora = plan_stages(_cfg(ROOT / "configs" / "llava_ta_vicuna7b.yaml"))[0]
    rows = {name: train for name, _, train in lora.rows}
    h, ffn, r = 4096, 11008, 128
    assert rows["lora"] == 32 * r * (4 * (h + h) + 3 * (h + ffn)) == 319_815_680
    assert rows["vision"] == 0 and rows["lm"] == 0  # frozen encoder and base LM


def test_r2genkg_trains_every_new_module_and_lora_only():
    (stage,), _ = plan_stages(_cfg(ROOT / "configs" / "r2genkg_llama2_7b.yaml"))
    rows = {name: (total, train) for name, total, train in stage.rows}
    assert rows["vision"][1] == 0 and rows["lm"][1] == 0
    new = [n for n in rows if n not in ("vision", "lm")]
    assert new and all(rows[n][0] == rows[n][1] for n in new), rows  # Q-Former, bank, R-GCN, fusion, LoRA ...
    assert rows["lora"][1] == 32 * 16 * 4 * (4096 + 4096)  # r=16 on q/k/v/o of Llama-2-7B
