"""What the user chose for the SHMT engine (`ShmtSettings`), its names, and the device it runs on."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shmt_cli.engines.base import DeviceUnavailable
from shmt_cli.engines.shmt.model import IdaForm
from shmt_cli.engines.shmt.sampler import ODE_START, SAMPLERS

LEVELS = ("h0", "h4", "mix")
IDA_FORMS = ("released", "paper")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
#: What the VQ autoencoder may run in (its codebook snapping always stays float32).
VQ_DTYPES = ("fp32", "bf16")
#: The denoiser's name of each user-facing IDA form.
DENOISER_FORM: dict[str, IdaForm] = {"released": "release", "paper": "train"}
#: The official two-model blend: model 1 (EMA weights) = SHMT-h4, model 2 (raw weights) = SHMT-h0.
MODEL1, MODEL2 = "h4", "h0"


@dataclass(frozen=True)
class ShmtSettings:
    """What the user chose for the SHMT engine.

    level: "h0", "h4", "mix" (official two-model blend) or "" = mix when both models are installed,
    else the installed one. mix: share of the DDIM steps run by h4 (official ``proportionOFmodel1``:
    steps with t >= 1000·mix use h0). steps: DDIM steps 1..1000. ida: "released" (official inference
    form) or "paper" (training form, w-blend with the noisy latent). ema_both: mix with EMA weights for
    h0 too (the official blend runs h0 with raw weights). batch_size: pairs per UNet batch. device:
    "auto" (cuda if available), "cpu", "cuda", "cuda:1", ... dtype: "fp32", "bf16" (UNet weights in
    bf16), "fp16" (UNet under autocast; needs CUDA). compile: torch.compile the UNet (None = on for
    CUDA, off for CPU). sampler: "ddim" (official, default) or "dpmpp" (DPM-Solver++ 2M, same ODE; 20
    steps land closer to its solution than DDIM's 50, see tools/sampler_accuracy.py). vq_dtype: "fp32"
    (default) or "bf16" for the VQ encoder/decoder (faster where bf16 is native; images differ from
    fp32 by about one 8-bit level, see tools/bench_shmt.py).
    """

    level: str = ""
    mix: float = 0.5
    steps: int = 50
    ida: str = "released"
    ema_both: bool = False
    batch_size: int = 4
    device: str = "auto"
    dtype: str = "fp32"
    compile: bool | None = None
    sampler: str = "ddim"
    vq_dtype: str = "fp32"

    def __post_init__(self) -> None:
        if self.level not in ("", *LEVELS):
            raise ValueError(f"--level for the shmt engine must be h0, h4 or mix, got {self.level!r}")
        if not 0.0 <= self.mix <= 1.0:
            raise ValueError(f"--mix must be in [0, 1] (share of steps run by h4), got {self.mix}")
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"--steps must be in 1..1000, got {self.steps}")
        if self.sampler not in SAMPLERS:
            raise ValueError(f"--sampler must be one of {', '.join(SAMPLERS)}, got {self.sampler!r}")
        if self.sampler == "dpmpp" and self.steps > ODE_START:
            raise ValueError(f"--steps for --sampler dpmpp must be in 1..{ODE_START}, got {self.steps}")
        if self.ida not in IDA_FORMS:
            raise ValueError(f"--ida must be released or paper, got {self.ida!r}")
        if self.batch_size < 1:
            raise ValueError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be fp32, bf16 or fp16, got {self.dtype!r}")
        if self.vq_dtype not in VQ_DTYPES:
            raise ValueError(f"--vq-dtype must be fp32 or bf16, got {self.vq_dtype!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except RuntimeError:
                raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}") from None


def resolve_device(name: str) -> torch.device:
    """ "auto" -> cuda when available, else cpu; anything else as torch parses it.

    Raises DeviceUnavailable for a CUDA device that is not there (a usage error, never a silent CPU run).
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if not count:
            raise DeviceUnavailable(f"--device {name}: no CUDA device is available here (use --device cpu)")
        if device.index is not None and device.index >= count:
            raise DeviceUnavailable(
                f"--device {name}: only {count} CUDA device(s) here (cuda:0..{count - 1})"
            )
    return device
