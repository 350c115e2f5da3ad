"""One object owns every DeepSpeed call: config, init, backward/step, save/load, gather.

The DeepSpeed config is generated here from the typed ``TrainConfig`` (never a
hand-kept JSON); ``train.deepspeed_overrides`` is merged in last for experts.
Model code never imports DeepSpeed: the family builds a plain ``nn.Module`` and
this strategy wraps it.
"""
from __future__ import annotations

import contextlib
import math
import os
import socket
from typing import Any, Iterator, Optional

import torch

from configs.schema import deep_merge
from trainer.config import TrainConfig


def torch_adamw_kwargs(ds_config: dict[str, Any]) -> dict[str, Any]:
    """The keyword arguments DeepSpeed hands ``torch.optim.AdamW`` for ``ds_config`` ("torch_adam").

    Mirrors DeepSpeed's own pops (engine.get_optimizer_configuration); the engine benchmark builds
    its plain loop's optimizer from this, so both loops run the same optimizer kernel.
    """
    params = dict(ds_config["optimizer"]["params"])
    for key in ("torch_adam", "adam_w_mode", "fp32_optimizer_states"):
        params.pop(key, None)
    params["betas"] = tuple(params["betas"])
    return params


def build_ds_config(train: TrainConfig, world_size: int, *, load_universal: bool = False,
                    use_gpu: bool = False) -> dict[str, Any]:
    """The DeepSpeed config for ``train`` on ``world_size`` ranks.

    Performance choices (docs/performance.md, measured by ``rrg bench train``):

    * ``contiguous_gradients`` only on GPU: it copies every gradient, from inside its hook, into
      one preallocated bucket to avoid allocator fragmentation on the device.  On CPU there is no
      such fragmentation and the per-parameter copies cost more than one flatten at the end of the
      backward (ZeRO-2: ~7 ms of the ~14 ms the hooks added per step on the demo model).
    * ``overlap_comm`` only on GPU: overlap needs a side stream; on CPU (gloo) it only adds work.
    * bucket sizes: on CPU one bucket holds every gradient (nothing to overlap, fewest calls:
      DeepSpeed's 5e8 default); on GPU 5e7 elements, so that reduction overlaps the backward and
      the double-buffered buckets of ``overlap_comm`` stay ~0.5 GB instead of ~4.5 GB in bf16.
    * ZeRO-3 on CPU: ``memory_efficient_linear`` off.  DeepSpeed's version replaces
      ``torch.nn.functional.linear`` process-wide by an autograd Function that re-gathers the
      weight in backward instead of keeping it; that saves device memory and costs Python work
      on every linear call (~17 ms of ~70 ms per demo step).  Partitioning is unchanged: the
      parameters are still gathered by ZeRO-3's module hooks, as for every non-linear layer.
    * torch's fused AdamW (one kernel over the flat fp32 partition, no temporaries): the same
      update as the for-loop AdamW up to float rounding, about half its time.
    None of these changes what is partitioned (the ZeRO stage) or what a checkpoint holds.
    """
    zero: dict[str, Any] = {"stage": train.zero_stage}
    if train.zero_stage >= 1:
        zero.update(contiguous_gradients=use_gpu, overlap_comm=use_gpu, reduce_scatter=True)
        if use_gpu:
            zero.update(reduce_bucket_size=50_000_000, allgather_bucket_size=50_000_000)
    if train.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if train.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    if train.zero_stage == 3:
        # export gathers weights itself (trainer/export.py); keep the 16-bit copy off
        zero.update(stage3_gather_16bit_weights_on_model_save=False)
        if use_gpu:
            zero.update(stage3_prefetch_bucket_size=50_000_000)
        else:  # DeepSpeed's own linear (an autograd Function per call) only saves device memory
            zero.update(memory_efficient_linear=False)
    # DeepSpeed's fused CPU Adam needs a ~30 s JIT build; torch's Adam(W) is used
    # unless the optimizer state lives on the CPU (offload), where CPU Adam is required.
    optimizer_params: dict[str, Any] = {
        "lr": train.lr, "betas": list(train.betas), "eps": 1e-8, "weight_decay": train.weight_decay,
    }
    if not train.offload_optimizer:
        optimizer_params.update(torch_adam=True, adam_w_mode=True, fused=True)
    cfg: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.micro_batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.micro_batch_size * train.grad_accum * world_size,
        "gradient_clipping": train.grad_clip,
        "optimizer": {"type": "AdamW", "params": optimizer_params},
        "zero_optimization": zero,
        "bf16": {"enabled": train.precision == "bf16"},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,  # rrg logs; keep DeepSpeed quiet
        "wall_clock_breakdown": False,
        "checkpoint": {"load_universal": load_universal},
    }
    if train.activation_checkpointing:
        cfg["activation_checkpointing"] = {"partition_activations": False, "contiguous_memory_optimization": False}
    return deep_merge(cfg, train.deepspeed_overrides)


def free_port() -> int:
    """A TCP port on the loopback that nothing listens on now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def single_process_env() -> None:
    """A one-rank process group's rendezvous on a free loopback port (benches; no launcher)."""
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(free_port())
    for key, value in (("MASTER_ADDR", "127.0.0.1"), ("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        os.environ.setdefault(key, value)


def cosine_with_warmup(step: int, *, warmup: int, total: int, min_ratio: float) -> float:
    """LR multiplier: linear warmup to 1, then cosine down to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def cast_unpartitioned(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """rrg's own modules (projector, mask conv, Q-Former, R-GCN, topic head, LoRA matrices) in the run's dtype.

    DeepSpeed casts the whole module itself at ZeRO-0/1/2, but under ZeRO-3 a model built inside
    ``zero.Init`` is not cast again: what was created outside it (everything rrg adds around the Hugging
    Face models) would stay fp32 and meet bf16 activations.  So every parameter not already partitioned,
    and every floating buffer outside the Hugging Face models (which keep theirs, e.g. rotary ``inv_freq``,
    in the precision they chose), is cast here, for every ZeRO stage alike.
    """
    from transformers import PreTrainedModel

    hf_buffers = {id(b) for m in model.modules() if isinstance(m, PreTrainedModel) for b in m.buffers()}
    for p in model.parameters():
        if p.is_floating_point() and p.dtype != dtype and not hasattr(p, "ds_id"):
            p.data = p.data.to(dtype)
    for module in model.modules():
        for name, buf in list(module._buffers.items()):  # noqa: SLF001
            if buf is not None and buf.is_floating_point() and buf.dtype != dtype and id(buf) not in hf_buffers:
                module._buffers[name] = buf.to(dtype)  # noqa: SLF001


def module_dtypes(model: torch.nn.Module) -> dict[str, str]:
    """Top-level part -> the dtypes of its parameters (as the engine holds them): what runs in what precision."""
    out: dict[str, set[str]] = {}
    for name, p in model.named_parameters():
        dt = getattr(p, "ds_tensor", p).dtype if hasattr(p, "ds_id") else p.dtype
        out.setdefault(name.split(".")[0], set()).add(str(dt).replace("torch.", ""))
    return {k: ",".join(sorted(v)) for k, v in out.items()}


class DeepSpeedStrategy:
    """Wraps a model in a DeepSpeed engine and exposes the handful of calls the loop needs."""

    def __init__(self, train: TrainConfig, *, world_size: int, rank: int, use_gpu: bool):
        self.train = train
        self.world_size, self.rank, self.use_gpu = world_size, rank, use_gpu
        self.engine = None
        self._hf_ds_config = None  # keeps transformers' ZeRO-3 awareness alive while models are built

    # -- set-up ---------------------------------------------------------------------
    @staticmethod
    def init_distributed(use_gpu: bool) -> None:
        """Join (or create) the process group; reuses one set up by Ray Train or torchrun."""
        os.environ.setdefault("DS_ACCELERATOR", "cuda" if use_gpu else "cpu")
        import deepspeed

        if not use_gpu:
            # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce kernel at start-up (a minute of
            # one core on a fresh machine, every other process waiting on its build lock) that only its
            # tensor-parallel inference calls; training's all-reduces go through gloo either way
            import deepspeed.ops

            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend="nccl" if use_gpu else "gloo")

    def ds_config(self, load_universal: bool = False) -> dict[str, Any]:
        return build_ds_config(self.train, self.world_size, load_universal=load_universal, use_gpu=self.use_gpu)

    @property
    def dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.train.precision == "bf16" else torch.float32

    @contextlib.contextmanager
    def model_init_context(self) -> Iterator[None]:
        """Models built here load their checkpoints in the run's precision; under ZeRO-3, Hugging Face
        models are partitioned as they are created."""
        from modeling.formats import loading_dtype

        if self.train.zero_stage == 3:
            from transformers.integrations import HfDeepSpeedConfig

            self._hf_ds_config = HfDeepSpeedConfig(self.ds_config())
        with loading_dtype(self.dtype):
            yield

    def release_model_init_context(self) -> None:
        """Stop building ZeRO-3-partitioned models (e.g. for an undistributed export copy)."""
        self._hf_ds_config = None

    def setup(self, model: torch.nn.Module, *, groups: Optional[list] = None, lr: Optional[float] = None,
              steps: Optional[int] = None, load_universal: bool = False) -> Any:
        """Wrap ``model``: one optimizer param group per family group (its lr = ``lr`` x ``lr_scale``).

        The schedule (warmup, then cosine to ``min_lr_ratio``) spans ``steps`` (one stage).
        """
        import deepspeed

        lr = self.train.lr if lr is None else lr
        if groups is None:
            param_groups = [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
        else:
            param_groups = [{"params": [p for p in g.params if p.requires_grad], "lr": lr * g.lr_scale, "name": g.name}
                            for g in groups]
            param_groups = [g for g in param_groups if g["params"]]
        if not param_groups or not any(g["params"] for g in param_groups):
            raise RuntimeError("no trainable parameters: check train.tuning / train.stages")
        cast_unpartitioned(model, self.dtype)
        cfg = self.ds_config(load_universal)
        cfg["optimizer"]["params"]["lr"] = lr
        total = steps or self.train.max_steps
        warmup = min(self.train.warmup_steps, max(0, total - 1))
        engine, _, _, _ = deepspeed.initialize(
            model=model,
            model_parameters=param_groups,
            config=cfg,
            lr_scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(
                opt, lambda s: cosine_with_warmup(s, warmup=warmup, total=total, min_ratio=self.train.min_lr_ratio)),
        )
        self.engine = engine
        return engine

    def teardown(self) -> None:
        """Drop the engine, its optimizer state and (ZeRO-3) its module hooks; the module itself stays usable
        (between stages the next stage wraps the same module again)."""
        if self.engine is not None and hasattr(self.engine, "destroy"):
            self.engine.destroy()
        self.engine = None
        import gc

        gc.collect()

    @contextlib.contextmanager
    def gathered(self, params: list, modify: bool = False) -> Iterator[None]:
        """Whole tensors inside (ZeRO-3: gathered; with ``modify``, rank 0's changes are kept on every rank)."""
        parts = [p for p in params if hasattr(p, "ds_id")]
        if not parts:
            yield
            return
        import deepspeed

        with deepspeed.zero.GatheredParameters(parts, modifier_rank=0 if modify else None):
            yield

    def merge_lora_in_place(self, model: torch.nn.Module) -> int:
        """Fold every LoRA adapter of ``model`` into its base weight, one layer at a time (never the whole
        model at once on any rank), then unwrap peft; returns the number of merged layers.  Collective."""
        from modeling.tuning import lora_layers, merge_lora_weight, unwrap_peft

        layers = lora_layers(model)
        for _, layer in layers:
            params = [layer.get_base_layer().weight] + [p for m in (layer.lora_A, layer.lora_B)
                                                         for p in m.parameters()]
            with self.gathered(params, modify=True):
                if self.rank == 0 or not any(hasattr(p, "ds_id") for p in params):
                    merge_lora_weight(layer)
        unwrap_peft(model)
        return len(layers)

    def weights_digest(self, model: torch.nn.Module) -> str:
        """:func:`modeling.tuning.weights_digest` of ``model.state_dict()``, one tensor gathered at a time
        (rank 0's answer; others get ""). Collective."""
        import hashlib

        entries = model.state_dict(keep_vars=True)
        h = hashlib.sha256()
        for key in sorted(entries):
            t = entries[key]
            with self.gathered([t] if isinstance(t, torch.nn.Parameter) else []):
                if self.rank == 0:
                    t = t.detach().to("cpu").contiguous()
                    h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
                    h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        return h.hexdigest() if self.rank == 0 else ""

    # -- the step ---------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return self.engine.device

    @property
    def module(self) -> torch.nn.Module:
        """The wrapped model (e.g. for generation; under ZeRO-3 its parameters stay partitioned)."""
        return self.engine.module

    def forward(self, batch: dict[str, Any]):
        return self.engine(**batch)

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[torch.nn.Module]:
        """The module in eval mode inside (dropout off), back in train mode after."""
        self.engine.eval()
        try:
            yield self.engine.module
        finally:
            self.engine.train()

    def eval_forward(self, batch: dict[str, Any]):
        """A forward in eval mode without gradients (``batch`` already on the device)."""
        with self.evaluating(), torch.no_grad():
            return self.engine(**batch)

    def backward_and_step(self, loss: torch.Tensor) -> bool:
        """Backward + (at an accumulation boundary) clip, optimizer and LR step.  True on a boundary."""
        boundary = self.engine.is_gradient_accumulation_boundary()
        self.engine.backward(loss)
        self.engine.step()
        return boundary

    def grad_norm(self) -> Optional[float]:
        norm = self.engine.get_global_grad_norm()
        if norm is None:
            return None
        return float(norm.item() if torch.is_tensor(norm) else norm)

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    # -- checkpoints -------------------------------------------------------------------
    def save(self, directory: str, tag: str) -> None:
        """Every rank writes its shard of model and optimizer state to ``directory/tag``."""
        self.engine.save_checkpoint(directory, tag=tag, save_latest=False,
                                    exclude_frozen_parameters=False)

    def load(self, directory: str, tag: str, *, trusted: bool = False) -> None:
        """Load ``directory/tag``; torch files are unpickled weights-only unless ``trusted``."""
        from trainer.safe_load import safe_torch_load

        with safe_torch_load(trusted):
            path, _ = self.engine.load_checkpoint(directory, tag=tag, load_optimizer_states=True,
                                                  load_lr_scheduler_states=True)
        if path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {directory}/{tag}")

    @staticmethod
    def consolidated_state_dict(directory: str, tag: str, *, trusted: bool = False) -> dict[str, torch.Tensor]:
        """The full fp32 state of a saved checkpoint (any ZeRO stage and world size), rebuilt in this
        process without a process group; torch files weights-only unless ``trusted``."""
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

        from trainer.safe_load import safe_torch_load

        with safe_torch_load(trusted):
            return get_fp32_state_dict_from_zero_checkpoint(directory, tag=tag)

    def load_plain_state(self, model: torch.nn.Module, state: dict[str, torch.Tensor]) -> tuple[list, list]:
        """``model.load_state_dict(state, strict=False)`` on a model every rank built (ZeRO-3: rank 0's
        copy, gathered, is kept on every rank); returns (missing, unexpected)."""
        with self.gathered(list(model.parameters()), modify=True):
            return model.load_state_dict(state, strict=False)

    def full_state_dict(self, *, only_trainable: bool = False, all_ranks: bool = False) -> dict[str, torch.Tensor]:
        """The unpartitioned ``module.state_dict()`` on rank 0 (others get {} unless ``all_ranks``); all must call.

        Under ZeRO-3 parameters are gathered one at a time (tied ones once), so peak
        memory stays one parameter above the shard size.  In bf16 a trainable parameter is taken from the
        optimizer's fp32 master copy (what a checkpoint consolidates to), not its bf16 working copy, so an
        export written during training holds exactly the weights ``zero_to_fp32`` rebuilds from the checkpoint.
        """
        module = self.engine.module
        entries = module.state_dict(keep_vars=True)
        if only_trainable:
            entries = {k: v for k, v in entries.items() if isinstance(v, torch.nn.Parameter) and v.requires_grad}
        keep = all_ranks or self.rank == 0
        masters = self.train.precision == "bf16"
        if self.train.zero_stage != 3 and not masters:
            if not keep:
                return {}
            return {k: v.detach().cpu().clone() for k, v in entries.items()}
        import deepspeed
        from deepspeed.utils import safe_get_full_fp32_param

        out: dict[str, torch.Tensor] = {}
        done: dict[int, torch.Tensor] = {}
        for name, tensor in entries.items():
            if id(tensor) not in done:
                master = None
                if masters and isinstance(tensor, torch.nn.Parameter) and tensor.requires_grad and \
                        (hasattr(tensor, "_z3_optimizer") or hasattr(tensor, "_hp_mapping")):
                    master = safe_get_full_fp32_param(tensor)  # collective
                if master is not None:
                    done[id(tensor)] = master.detach().cpu().clone() if keep else torch.empty(0)
                elif hasattr(tensor, "ds_id"):
                    with deepspeed.zero.GatheredParameters([tensor], modifier_rank=None):
                        done[id(tensor)] = tensor.detach().cpu().clone() if keep else torch.empty(0)
                else:
                    done[id(tensor)] = tensor.detach().cpu().clone() if keep else torch.empty(0)
            if keep:
                out[name] = done[id(tensor)]
        return out


def single_process_group() -> None:
    """A one-rank process group on a free loopback port (benches; no launcher)."""
    single_process_env()
    DeepSpeedStrategy.init_distributed(False)
