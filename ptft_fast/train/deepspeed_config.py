"""DeepSpeed configuration for a run: ``--deepspeed ds_config.json`` passed through, or generated
from ``--zero-stage 1|2|3 [--offload-optimizer cpu|nvme] [--offload-params cpu|nvme]``.

Either way the batch arithmetic is checked against the run: micro-batch × accumulation × world
size must equal the global batch, and a JSON that disagrees with the run's TrainConfig is an
error naming both values (never silently overridden). Precision comes from ``TrainConfig``:
bf16 turns on DeepSpeed's bf16 mode, fp16 its dynamic loss scaler.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from ptft_fast.train.config import TrainConfig, TrainConfigError

OFFLOAD_DEVICES = ("cpu", "nvme")
BATCH_KEYS = ("train_micro_batch_size_per_gpu", "gradient_accumulation_steps", "train_batch_size")


@dataclass
class DeepSpeedOptions:
    config: str | None = None  # path of a DeepSpeed JSON passed through (--deepspeed)
    zero_stage: int | None = None  # 1 | 2 | 3 (generated config); None with no --deepspeed = DeepSpeed off
    offload_optimizer: str | None = None  # cpu | nvme: optimizer state (and step) off the accelerator
    offload_params: str | None = None  # cpu | nvme: ZeRO-3 parameters off the accelerator
    nvme_path: str = "/local_nvme"  # folder for nvme offload swap files

    @property
    def enabled(self) -> bool:
        return self.config is not None or self.zero_stage is not None

    def validate(self) -> None:
        """Raise TrainConfigError naming the option that breaks a rule."""
        if self.config is not None and self.zero_stage is not None:
            raise TrainConfigError(
                f"--deepspeed {self.config} and --zero-stage {self.zero_stage} are contradictory: "
                "set zero_optimization.stage in the JSON, or drop --deepspeed to generate a config"
            )
        if self.zero_stage is not None and self.zero_stage not in (0, 1, 2, 3):
            raise TrainConfigError(f"--zero-stage must be 0, 1, 2 or 3, got {self.zero_stage}")
        for name in ("offload_optimizer", "offload_params"):
            value = getattr(self, name)
            if value is not None and value not in OFFLOAD_DEVICES:
                raise TrainConfigError(f"--{name.replace('_', '-')} must be cpu or nvme, got {value!r}")
            if value is not None and self.config is not None:
                raise TrainConfigError(
                    f"--{name.replace('_', '-')} applies to a generated config; with --deepspeed "
                    f"{self.config} put it in zero_optimization"
                )
        if self.offload_params is not None and self.zero_stage != 3:
            raise TrainConfigError(
                f"--offload-params needs --zero-stage 3 (parameters are partitioned only at stage 3), "
                f"got --zero-stage {self.zero_stage}"
            )
        if self.offload_optimizer is not None and self.zero_stage in (None, 0):
            raise TrainConfigError(f"--offload-optimizer needs --zero-stage 1, 2 or 3, got {self.zero_stage}")


def _offload(device: str, nvme_path: str) -> dict:
    out: dict = {"device": device, "pin_memory": False}
    if device == "nvme":
        out["nvme_path"] = nvme_path
    return out


def precision_section(cfg: TrainConfig) -> dict:
    """bf16 → DeepSpeed bf16; fp16 → DeepSpeed fp16 with its dynamic loss scaler; fp32 → neither."""
    if cfg.precision == "bf16":
        return {"bf16": {"enabled": True}}
    if cfg.precision == "fp16":
        return {
            "fp16": {
                "enabled": True,
                "loss_scale": 0,  # 0 = dynamic
                "initial_scale_power": round(math.log2(cfg.init_loss_scale)),
                "loss_scale_window": cfg.loss_scale_window,
                "hysteresis": 1,  # halve on the first overflow, like TorchStrategy
                "min_loss_scale": 1,
            }
        }
    return {}


def generate_config(opts: DeepSpeedOptions, cfg: TrainConfig, world_size: int) -> dict:
    """A DeepSpeed config for ZeRO stage ``opts.zero_stage`` matching the run's settings."""
    zero: dict = {"stage": opts.zero_stage or 0}
    if opts.offload_optimizer:
        zero["offload_optimizer"] = _offload(opts.offload_optimizer, opts.nvme_path)
    if opts.offload_params:
        zero["offload_param"] = _offload(opts.offload_params, opts.nvme_path)
    if zero["stage"] == 3:
        # consolidated 16-bit weights on engine.save_16bit_model; ptft export-zero reads shards instead
        zero["stage3_gather_16bit_weights_on_model_save"] = False
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum_steps * world_size,
        "gradient_clipping": cfg.max_grad_norm,
        "zero_optimization": zero,
        # our AdamW (torch) is the client optimizer: no compiled DeepSpeed op is needed, also on CPU
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
        "steps_per_print": 10**9,  # the trainer logs
        "wall_clock_breakdown": False,
        **precision_section(cfg),
    }


def check_batch(ds: dict, cfg: TrainConfig, world_size: int, source: str) -> dict:
    """Fill the batch keys missing from ``ds`` from the run and check micro × accum × world = global.

    A value that disagrees with the run's ``micro_batch_size`` / ``grad_accum_steps``, or a global
    batch that is not their product with the world size, raises TrainConfigError naming them all.
    """
    want = {
        "train_micro_batch_size_per_gpu": cfg.micro_batch_size,
        "gradient_accumulation_steps": cfg.grad_accum_steps,
        "train_batch_size": cfg.micro_batch_size * cfg.grad_accum_steps * world_size,
    }
    out = dict(ds)
    for key in BATCH_KEYS:
        value = out.get(key, "auto")
        if value == "auto":
            out[key] = want[key]
    clash = [
        f"{key}={out[key]} but the run has {name}={want[key]}"
        for key, name in zip(BATCH_KEYS[:2], ("micro_batch_size", "grad_accum_steps"), strict=True)
        if out[key] != want[key]
    ]
    if clash:
        raise TrainConfigError(f"{source} contradicts the run config: " + "; ".join(clash))
    micro, accum, total = (out[k] for k in BATCH_KEYS)
    if micro * accum * world_size != total:
        raise TrainConfigError(
            f"{source}: batch arithmetic fails: train_micro_batch_size_per_gpu ({micro}) × "
            f"gradient_accumulation_steps ({accum}) × world size ({world_size}) = "
            f"{micro * accum * world_size}, but train_batch_size is {total}"
        )
    return out


def check_precision(ds: dict, cfg: TrainConfig, source: str) -> None:
    """A passed-through JSON must agree with ``precision`` (bf16/fp16 sections)."""
    on = {k for k in ("bf16", "fp16") if ds.get(k, {}).get("enabled") in (True, "auto")}
    want = {cfg.precision} & {"bf16", "fp16"}
    if on != want:
        raise TrainConfigError(
            f"{source} enables {sorted(on) or 'fp32'} but the run has precision={cfg.precision!r}"
        )


def build_config(opts: DeepSpeedOptions, cfg: TrainConfig, world_size: int) -> dict:
    """The DeepSpeed config dict for this run (passed through or generated), batch-checked."""
    opts.validate()
    if opts.config is not None:
        ds = json.loads(Path(opts.config).read_text())
        for key in ("bf16", "fp16"):
            if ds.get(key, {}).get("enabled") == "auto":
                ds[key] = precision_section(cfg).get(key, {"enabled": False})
        check_precision(ds, cfg, opts.config)
        if ds.get("gradient_clipping", "auto") == "auto":
            ds["gradient_clipping"] = cfg.max_grad_norm
        ds.setdefault("zero_allow_untested_optimizer", True)
        ds.setdefault("zero_force_ds_cpu_optimizer", False)
        if "optimizer" in ds or "scheduler" in ds:
            raise TrainConfigError(
                f"{opts.config}: remove 'optimizer'/'scheduler': the run's AdamW and lr schedule "
                "(lr, betas, weight_decay, schedule keys of the run config) drive the engine"
            )
        return check_batch(ds, cfg, world_size, opts.config)
    return check_batch(generate_config(opts, cfg, world_size), cfg, world_size, "generated DeepSpeed config")
