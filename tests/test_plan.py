"""`rrg plan`: every real-scale config is planned on the meta device; trainable counts match the papers;
the memory plan matches the measured peak memory of real training steps."""
from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig

from modeling.config import without_path_checks
from trainer.config import load_config
from trainer.plan import model_state_bytes, plan_stages, run_plan

ROOT = Path(__file__).resolve().parent.parent
REAL_SCALE = [p for p in sorted((ROOT / "configs").glob("*.yaml")) if
              p.stem not in ("demo", "tiny") and not p.stem.endswith("_demo")]


def _cfg(path, *overrides):
    with without_path_checks():
        return load_config(path, list(overrides))


def _lm_params(hf: dict, vocab: int, tied: bool) -> int:
    """A Llama / Gemma 3 decoder's parameter count in closed form (no biases)."""
    h, f, layers = hf["hidden_size"], hf["intermediate_size"], hf["num_hidden_layers"]
    d = hf.get("head_dim") or h // hf["num_attention_heads"]
    q, kv = hf["num_attention_heads"] * d, (hf.get("num_key_value_heads") or hf["num_attention_heads"]) * d
    gemma3 = hf["model_type"].startswith("gemma3")
    norms = 4 * h + 2 * d if gemma3 else 2 * h  # Gemma 3: pre/post norms around both blocks + q/k norms
    layer = 2 * h * q + 2 * h * kv + 3 * h * f + norms
    return vocab * h * (1 if tied else 2) + layers * layer + h


def _lora_params(hf: dict, r: int, targets: list[str]) -> int:
    """LoRA r x (in + out) per targeted projection of every decoder layer."""
    h, f = hf["hidden_size"], hf["intermediate_size"]
    d = hf.get("head_dim") or h // hf["num_attention_heads"]
    q, kv = hf["num_attention_heads"] * d, (hf.get("num_key_value_heads") or hf["num_attention_heads"]) * d
    shapes = {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
              "gate_proj": (h, f), "up_proj": (h, f), "down_proj": (f, h)}
    return hf["num_hidden_layers"] * sum(r * sum(shapes[t]) for t in targets)


@pytest.mark.parametrize("path", REAL_SCALE, ids=lambda p: p.name)
def test_every_real_scale_config_is_planned(path):
    """Every figure of the plan that has a closed form, recomputed here from the config's numbers:
    the global batch, the LM's parameter count, the LoRA count, which modules each tuning trains,
    weights / gradients / AdamW bytes per GPU, and the hours per epoch from the FLOPs per step."""
    cfg = _cfg(path)
    gpus, studies, t = 8, 200_000, cfg.train
    with contextlib.redirect_stdout(io.StringIO()):
        out = run_plan(cfg, gpus=gpus, studies=studies)
    plans, (family, _) = plan_stages(cfg)
    hf = family.cfg.lm.hf_config  # the architecture the plan built (inline, or a directory's config.json)
    tied = AutoConfig.for_model(**hf).tie_word_embeddings  # the model type's default unless the config says
    bf16 = t.precision == "bf16"
    global_batch = t.micro_batch_size * t.grad_accum * gpus
    assert out["global_batch"] == global_batch
    assert len(out["stages"]) == len(plans) == len(t.resolved_stages())
    for stage, sp, st in zip(t.resolved_stages(), plans, out["stages"]):
        rows = {name: (total, train) for name, total, train in sp.rows}
        assert (st["total"], st["trainable"]) == (sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values()))
        assert rows["lm"][0] == sp.lm_params == _lm_params(hf, sp.vocab, tied), stage
        assert rows["lm"][1] == (sp.lm_params if stage.tuning == "full" else 0), stage
        # a trained encoder trains all but what the features never reach (SigLIP's pooling head)
        assert (0 < rows["vision"][1] <= rows["vision"][0]) if stage.train_vision else rows["vision"][1] == 0, stage
        if stage.tuning == "lora":
            assert rows["lora"] == (_lora_params(hf, t.lora.r, t.lora.target_modules),) * 2, stage
        else:
            assert "lora" not in rows, stage
        if stage.tuning == "projector":  # nothing of the LM or the encoder, the projector in full
            assert rows["projector"][0] == rows["projector"][1] > 0 and st["trainable"] <= sum(
                total for name, (total, _) in rows.items() if name not in ("lm", "vision")), stage
        p, n = st["total"], st["trainable"]
        want = {"weights": (2 if bf16 else 4) * p / (gpus if t.zero_stage >= 3 else 1),
                "gradients": (2 if bf16 else 4) * n / (gpus if t.zero_stage >= 2 else 1),
                "optimizer": 0 if t.offload_optimizer else (12 if bf16 else 8) * n / (gpus if t.zero_stage >= 1 else 1)}
        for ckpt in ("False", "True"):
            got = st["memory_bytes"][ckpt]
            assert {k: got[k] for k in want} == pytest.approx(want, rel=1e-12), (stage, ckpt)
            assert got["activations"] > 0
        assert st["memory_bytes"]["True"]["activations"] < st["memory_bytes"]["False"]["activations"], stage
        # FLOPs/step: the LM part in closed form (6N full, 4N LoRA/projector) is its largest term
        lm_per_token = (6 if stage.tuning == "full" else 4) * sp.lm_params
        assert st["flops_per_step"] > global_batch * out["seq_len"] * lm_per_token, stage
        steps = -(-studies // global_batch)
        assert st["hours_per_epoch"] == pytest.approx(steps * st["flops_per_step"] / (gpus * 989e12 * 0.40) / 3600,
                                                      rel=1e-12), stage


def test_radixpert_trains_about_126m_parameters():
    """Paper: ~126M trainable (MLP + 1x1 conv + LoRA); tolerance 3%.

    What is calibrated: the paper states the trainable count and the modules, not the LoRA
    rank. The config's rank (208 on q/k/v/o) was chosen so the count lands near 126M, so the
    126M check confirms the stated modules add up at that rank; it does not confirm the rank.
    The paper's other figure, 1.8% of the total, is not reproduced: the model is BioViL's ResNet-50
    (23.5M) + MedGemma-4b's text model (3.88B) + the MLP, 4.03B, so 127.8M is 3.17% (126M / 1.8% would
    be a 7.0B model). r=128 on q/k/v/o gives 83.3M = 2.09% instead; no rank on these modules meets both.
    """
    (stage,), _ = plan_stages(_cfg(ROOT / "configs" / "radixpert_medgemma4b.yaml"))
    rows = {name: (total, train) for name, total, train in stage.rows}
    assert set(n for n, (_, t) in rows.items() if t) == {"projector", "mask_branch", "lora"}
    assert abs(stage.trainable - 126e6) / 126e6 < 0.03, stage.trainable
    # LoRA on q/k/v/o in closed form: r x (in + out) per projection, 34 layers
    h, q, kv, r = 2560, 8 * 256, 4 * 256, 208
    assert rows["lora"][1] == 34 * r * ((h + q) + 2 * (h + kv) + (q + h))
    # BioViL's ResNet-50 (torchvision's 23,508,032 without fc) + Gemma3-4b's text model, no SigLIP tower
    assert rows["vision"][0] == 23_508_032 and rows["lm"][0] == 3_880_263_168
    assert 4.0e9 < stage.total < 4.05e9 and 0.031 < stage.trainable / stage.total < 0.032  # 3.17%, not 1.8%
    (r128,), _ = plan_stages(_cfg(ROOT / "configs" / "radixpert_medgemma4b.yaml", "train.lora.r=128"))
    assert abs(r128.trainable / r128.total - 0.0209) < 0.001 and r128.trainable < 84e6


def test_llava_rad_7b_counts_in_closed_form():
    """LLaVA-Rad's recipe: stage 1 the mlp2x_gelu projector, stage 2 + LoRA r=64 on every linear layer of Vicuna-7B."""
    align, lora = plan_stages(_cfg(ROOT / "configs" / "llava_rad_7b.yaml"))[0]
    proj = 768 * 4096 + 4096 + 4096 * 4096 + 4096
    h, ffn, r = 4096, 11008, 64
    assert align.trainable == proj and lora.trainable == proj + 32 * r * (4 * (h + h) + 3 * (h + ffn))
    assert 6.7e9 < lora.lm_params < 6.8e9  # Vicuna-7B (Llama-2 7B architecture)
    assert align.vision_params == 86_580_480  # DINOv2 ViT-B/14 at 518 px (BiomedCLIP-CXR's trunk)


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
    assert "FLOPs/step = global_batch x (seq x (4 x N_lm" in proc.stdout and "time per epoch" in proc.stdout  # LoRA
    assert "memory/GPU, activation checkpointing on" in proc.stdout
    assert "memory method (GiB = 2^30 bytes, --gpu-memory in GiB)" in proc.stdout and " GB" not in proc.stdout


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
    assert rows["lora"][1] == 32 * 16 * 2 * (4096 + 4096)  # R2GenGPT's r=16 on q/v of Llama-2-7B


def test_plan_from_a_local_directory_config_json(tmp_path):
    """No inline hf_config: the architecture comes from each model directory's config.json (no weights)."""
    inline = _cfg(ROOT / "configs" / "tiny.yaml")
    for sub, hf in (("vision", {**inline.model.vision.hf_config, "model_type": "siglip_vision_model"}),
                    ("lm", {**inline.model.lm.hf_config, "model_type": "llama", "num_hidden_layers": 3,
                            "vocab_size": 384})):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "config.json").write_text(json.dumps(hf))
    cfg = _cfg(ROOT / "configs" / "tiny.yaml", "model.vision.hf_config={}", "model.lm.hf_config={}",
               f"model.vision.path={tmp_path / 'vision'}", f"model.lm.path={tmp_path / 'lm'}")
    assert not cfg.model.lm.hf_config and not list(tmp_path.glob("*/*.safetensors"))
    (from_dir,), _ = plan_stages(cfg)
    (two,), _ = plan_stages(inline)
    (three,), _ = plan_stages(_cfg(ROOT / "configs" / "tiny.yaml", "model.lm.hf_config.num_hidden_layers=3",
                                   "model.lm.hf_config.vocab_size=384"))
    assert from_dir.rows == three.rows and from_dir.lm_params > two.lm_params  # read from the file, not tiny.yaml
    with contextlib.redirect_stdout(io.StringIO()):
        assert run_plan(cfg, gpus=1, studies=160)["stages"][0]["memory_bytes"]["False"]["activations"] > 0
    with pytest.raises(ValueError, match="config.json"):
        plan_stages(_cfg(ROOT / "configs" / "tiny.yaml", "model.lm.hf_config={}", f"model.lm.path={tmp_path}"))


# ---- the memory plan against measured peak memory ------------------------------------------------
# A fresh process builds the model, runs two real training steps (forward, backward, AdamW), and
# reports its peak RSS (VmHWM, reset through /proc/self/clear_refs just before the model is built)
# minus the RSS at that point: weights + gradients + optimizer states + activations at their peak.
# glibc is told to serve every block over 128 KiB with mmap (MALLOC_MMAP_THRESHOLD_), so freed
# tensors leave RSS at once; with its default, growing threshold freed activation-sized blocks stay
# in the heap and RSS measures what the allocator keeps (up to 2.3x the live bytes here), as CUDA's
# "reserved" does, while the plan counts live tensor bytes, as torch.cuda.max_memory_allocated does.
_MEASURE = r"""
import ctypes, gc, json, sys
import torch

torch.set_num_threads(1)
from modeling.family import build_family
from modeling.vlm import prompt_ids
from modeling.tuning import apply_tuning
from trainer.config import load_config


def rss(key):
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key))


def measure(overrides, checkpointing):
    cfg = load_config("configs/tiny.yaml", overrides)
    fam = build_family(cfg.model)
    tok = fam.tokenizer(["no acute cardiopulmonary process heart size normal lungs clear"] * 8)

    def build():
        model = fam.build_model(tok)
        apply_tuning(model, fam, cfg.train.resolved_stages()[0].spec(cfg.train.lora))
        if checkpointing:
            model.enable_activation_checkpointing()
        model.train()
        return model, torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

    def batch(b):  # rows filled to max_text_len, so the sequence is the one the plan assumes
        g = torch.Generator().manual_seed(0)
        p = prompt_ids(tok, cfg.model)
        ids = torch.cat([torch.tensor(p).expand(b, -1),
                         torch.randint(5, len(tok), (b, cfg.model.max_text_len - len(p)), generator=g)], 1)
        labels = ids.clone()
        labels[:, :len(p)] = -100
        size = cfg.model.vision.image_size
        return {"pixel_values": torch.randn(b, 3, size, size, generator=g), "input_ids": ids,
                "attention_mask": torch.ones_like(ids), "labels": labels}

    def steps(model, opt, bb, n):
        for _ in range(n):
            out = model(**bb)
            out.loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del out

    model, opt = build()  # warm-up on one row: lazy imports and kernel set-up stay out of the measurement
    steps(model, opt, batch(1), 1)
    del model, opt
    bb = batch(cfg.train.micro_batch_size)
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # peak RSS := current RSS
    base = rss("VmRSS")
    model, opt = build()
    steps(model, opt, bb, 2)  # the second step runs with the optimizer states allocated: the steady-state peak
    return rss("VmHWM") - base


for case in json.loads(sys.argv[1]):
    print(json.dumps({"name": case["name"], "peak": measure(case["overrides"], case["checkpointing"])}), flush=True)
"""

_LM = ["model.lm.hf_config.hidden_size=256", "model.lm.hf_config.intermediate_size=512",
       "model.lm.hf_config.num_hidden_layers=4", "model.lm.hf_config.vocab_size=512", "train.micro_batch_size=16"]
MEMORY_CASES = [  # tiny.yaml's model, wider: activations of 60-270 MiB against a few MiB of noise
    {"name": "full tuning, decoder layers dominate", "checkpointing": False, "overrides": _LM},
    {"name": "LoRA (dropout 0.05) + activation checkpointing", "checkpointing": True,
     "overrides": _LM + ["train.tuning=lora", "train.train_vision=false"]},
    {"name": "logits and cross-entropy dominate", "checkpointing": False,
     "overrides": ["model.lm.hf_config.vocab_size=8192", "model.lm.hf_config.num_hidden_layers=1",
                   "train.micro_batch_size=16"]},
]
MEMORY_TOLERANCE = 0.15


@pytest.mark.skipif(not sys.platform.startswith("linux") or not os.access("/proc/self/clear_refs", os.W_OK),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
def test_memory_plan_matches_measured_peak_rss():
    """fp32 on CPU: measured peak (weights + gradients + AdamW + activations) within 15% of the plan.

    In every case the planned activations are at least 80% of the planned total, so an activation
    formula off by 2x (either way) misses by 40% or more and fails. Measured on the reference
    machine: ratios 0.94 (full), 0.99 (LoRA + checkpointing), 1.00 (logits); the full-tuning plan
    is high by the gradients, which are not yet allocated at the peak (the start of backward).
    The plan is asked for a CPU's dropout mask (fp32, 4 bytes; CUDA keeps 1-byte masks).
    """
    env = dict(os.environ, OMP_NUM_THREADS="1", MALLOC_MMAP_THRESHOLD_="131072")
    proc = subprocess.run([sys.executable, "-c", _MEASURE, json.dumps(MEMORY_CASES)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = {r["name"]: r["peak"] for r in map(json.loads, proc.stdout.splitlines())}
    rows = []
    for case in MEMORY_CASES:
        with contextlib.redirect_stdout(io.StringIO()):
            plan = run_plan(load_config(ROOT / "configs" / "tiny.yaml", case["overrides"]), gpus=1, studies=1,
                            dropout_mask_bytes=4)
        parts = plan["stages"][0]["memory_bytes"][str(case["checkpointing"])]
        rows.append((case["name"], measured[case["name"]], sum(parts.values()), parts["activations"]))
    report = "\n".join(f"{name}: measured {peak / 2 ** 20:.1f} MiB, planned {planned / 2 ** 20:.1f} MiB "
                        f"(activations {act / 2 ** 20:.1f}), ratio {peak / planned:.3f}"
                        for name, peak, planned, act in rows)
    print(report)
    assert all(abs(peak / planned - 1) <= MEMORY_TOLERANCE for _, peak, planned, _ in rows), report
    # the check has teeth: activations dominate the plan, and the peak stands far above RSS noise
    assert all(act >= 0.8 * planned and peak > 50 * 2 ** 20 for _, peak, planned, act in rows), report
