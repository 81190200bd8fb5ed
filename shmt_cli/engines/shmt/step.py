"""One sampler step as one function — the IDA where it depends on z_t, the UNet, the scheduler update —
run eagerly or compiled as a single graph over static input buffers.

Why static buffers: a compiled graph is specialised on its inputs' shapes, dtypes and dispatch keys
(an inference tensor and a normal one differ), and CUDA graphs replay fixed addresses. `WholeStep`
owns x_t, t, the update coefficients and the previous x0 prediction, writes each step's values into
them, and (compiled) copies each batch's per-pair precompute into static tensors too, so every call
of one model's step sees identical inputs: one graph per model and batch size, no recompiles. The
engine pads every batch to its batch size when compiled (see engine.py).

torch.compile caches graphs per Python code object, so two models calling one function would count
as a recompile of it (their parameter shapes differ). Each compiled `WholeStep` therefore runs its
own copy of the step function's code object: models compile once each, never recompile.
"""

from __future__ import annotations

import types
from collections.abc import Callable, Hashable, Mapping
from dataclasses import replace
from typing import Any

import torch

from shmt_cli.engines.shmt.ida import PreparedReference
from shmt_cli.engines.shmt.model import PreparedPair, ShmtDenoiser
from shmt_cli.engines.shmt.sampler import SampleTrajectory, StepPlan, linear_update

#: Compile settings: {"backend": a torch.compile backend}, "inductor" unless a test asks for a cheaper one.
CompileOptions = Mapping[str, Any]


def _step_body(step: WholeStep) -> tuple[torch.Tensor, torch.Tensor]:
    """The compiled unit: ε of `step.denoiser` at the static x_t, t, then the sampler update."""
    x_in = step.denoiser.step_input(step.x, step.t, step.pair)
    eps = step.denoiser.run_unet(x_in, step.t, step.autocast)
    return linear_update(step.x, eps, step.k, step.x0_prev)


def _own_code_copy(fn: Callable, name: str) -> Callable:
    """`fn` with a code object of its own (same bytecode), so torch.compile keeps a separate cache."""
    code = fn.__code__.replace(co_name=name)
    return types.FunctionType(code, fn.__globals__, name, fn.__defaults__, fn.__closure__)


def _static_like(prepared: PreparedPair) -> PreparedPair:
    """Empty tensors shaped (and laid out) like `prepared`'s, to copy each batch into."""
    ref = prepared.reference
    return replace(
        prepared,
        reference=PreparedReference(*(torch.empty_like(x) for x in (ref.values, ref.features, ref.labels))),
        mask64=torch.empty_like(prepared.mask64),
        onehot_src=torch.empty_like(prepared.onehot_src),
        content_warp=torch.empty_like(prepared.content_warp),
        buffer=torch.empty_like(prepared.buffer),
    )


def _tensors(prepared: PreparedPair) -> tuple[torch.Tensor, ...]:
    """The tensors of a prepared pair the step reads, in a fixed order."""
    ref = prepared.reference
    return (
        prepared.buffer,
        prepared.mask64,
        prepared.onehot_src,
        prepared.content_warp,
        ref.values,
        ref.features,
        ref.labels,
    )


def _copy_pair(target: PreparedPair, source: PreparedPair) -> None:
    for dst, src in zip(_tensors(target), _tensors(source), strict=True):
        dst.copy_(src)


class WholeStep:
    """One model's sampler step for batches shaped like `template` (a `PreparedPair` of batch B).

    `load(prepared)` sets the batch; `__call__(x, t, k, x0_prev)` returns (x_next, x0) as new tensors.
    Eager: the loaded pair is used in place. Compiled (`compile` options given): the pair is copied into
    static tensors, and the step is ``torch.compile(fullgraph=True, dynamic=False)``, with CUDA graphs
    (``mode="reduce-overhead"``) on CUDA.
    """

    def __init__(
        self,
        denoiser: ShmtDenoiser,
        template: PreparedPair,
        autocast: torch.dtype | None = None,
        compile: CompileOptions | None = None,
        name: str = "shmt_step",
    ) -> None:
        self.denoiser = denoiser
        self.autocast = autocast
        self.compiled = compile is not None
        batch, _, height, width = template.content_warp.shape
        device = template.buffer.device
        with torch.inference_mode():
            self.pair = _static_like(template) if self.compiled else template
            self.x = torch.zeros((batch, 3, height, width), device=device)
            self.x0_prev = torch.zeros_like(self.x)
            self.t = torch.zeros((batch,), dtype=torch.long, device=device)
            self.k = torch.zeros((6,), device=device)
        self._loaded: PreparedPair | None = None
        self._run: Callable[[], tuple[torch.Tensor, torch.Tensor]]
        if compile is None:
            self._run = lambda: _step_body(self)
        else:
            body = types.MethodType(_own_code_copy(_step_body, name), self)
            mode = "reduce-overhead" if device.type == "cuda" else None
            if mode:  # CUDA graphs read these in place instead of copying them at every replay
                for tensor in (self.x, self.x0_prev, self.t, self.k, *_tensors(self.pair)):
                    torch._dynamo.mark_static_address(tensor)
            self._run = torch.compile(
                body, fullgraph=True, dynamic=False, mode=mode, backend=compile.get("backend", "inductor")
            )

    @property
    def batch_size(self) -> int:
        return int(self.x.shape[0])

    def fits(self, prepared: PreparedPair) -> bool:
        """Whether `prepared` has this step's batch size, form and shapes (else build another step)."""
        mine = self.pair
        return prepared.form == mine.form and prepared.buffer.shape == mine.buffer.shape

    @torch.inference_mode()
    def load(self, prepared: PreparedPair) -> None:
        """Make `prepared` the batch the next calls run on (copied into the static tensors if compiled)."""
        if prepared is self._loaded:
            return
        if not self.fits(prepared):
            raise ValueError("this step was built for another batch size or IDA form")
        if self.compiled:
            _copy_pair(self.pair, prepared)
        else:
            self.pair = prepared
        self._loaded = prepared

    @torch.inference_mode()
    def __call__(
        self, x: torch.Tensor, t: int | torch.Tensor, k: torch.Tensor, x0_prev: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_next, x0) (B, 3, 64, 64) float32 for x_t (B, 3, 64, 64) at t (int, or (B,) int64 of any
        origin) with update coefficients k (6,) and the previous x0 prediction (zeros at the start)."""
        self.x.copy_(x)
        if isinstance(t, int):
            self.t.fill_(t)
        else:
            self.t.copy_(t)
        self.k.copy_(k)
        self.x0_prev.copy_(x0_prev)
        x_next, x0 = self._run()
        # Clones: CUDA graphs overwrite their outputs at the next replay.
        return x_next.clone(), x0.clone()


def run_plan(
    plan: StepPlan,
    steps: Mapping[Hashable, WholeStep],
    x_T: torch.Tensor,
    choose: Callable[[int], Hashable],
    *,
    record: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SampleTrajectory:
    """Sample from x_T (B, 3, 64, 64) along `plan`, step i by the model ``choose(t_i)`` (its `WholeStep`
    already loaded with the batch). ``record`` keeps [x_T, x after each step] and the x0 predictions."""
    result = SampleTrajectory(samples=x_T, timesteps=list(plan.timesteps))
    if record:
        result.x_inter.append(x_T)
    x, x0 = x_T, torch.zeros_like(x_T)
    coefficients = plan.coefficients.to(x_T.device)
    for i, t in enumerate(plan.timesteps):
        which = choose(t)
        x, x0 = steps[which](x, t, coefficients[i], x0)
        result.choices.append(which)
        if record:
            result.x_inter.append(x)
            result.pred_x0.append(x0)
        if progress is not None:
            progress(i + 1, len(plan.timesteps))
    result.samples = x
    return result
