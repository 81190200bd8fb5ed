"""DDIM sampling as the official SHMT sampler does it, driven through diffusers' ``DDIMScheduler``.

Official behaviour reproduced (reference §3.1, §3.2, §8 #24):

* LDM "linear" schedule: ``betas = linspace(sqrt(0.0015), sqrt(0.0195), 1000, float64) ** 2``,
  cumulative product in float64, buffers stored as float32.
* "uniform" timesteps ``range(0, 1000, 1000 // S) + 1`` (1, 21, ..., 981 for S = 50), visited from
  the largest; the last step's alpha_prev is ``alphas_cumprod[0]`` (0.9985), not 1.
* eta 0, epsilon prediction, no clipping of the predicted x0.

diffusers' ``DDIMScheduler`` with ``timestep_spacing="leading"`` and ``steps_offset=1`` produces the
same list ``i * (1000 // S) + 1`` and derives alpha_prev from ``t - 1000 // S``, which is exactly the
official previous entry. Two differences are patched after construction: diffusers computes
``alphas_cumprod`` in float32 from float32 betas, so we install the float64-derived buffer, and
``final_alpha_cumprod`` is re-pointed at that buffer's first entry.

Where the official code misbehaves we repair it: it crashes when ``range(0, 1000, 1000 // S)`` reaches
999 (S = 3, 9, 27, 37, 111, 333, 999: index 1000) and runs more than S steps when that range has
extra elements (S = 6 runs 7, S = 30 runs 31). Only the 15 divisors of 1000 below 1000 (1, 2, 4, 5,
8, 10, 20, 25, 40, 50, 100, 125, 200, 250, 500) run exactly S official steps. ``ddim_timesteps(S)``
keeps the first S entries, which is identical to the official list wherever the official code works.
S = 1000 cannot fit in 1..999, so it uses 0..999.

The fast sampler ``dpmpp`` is DPM-Solver++ 2M (diffusers' ``DPMSolverMultistepScheduler``) on the
same β schedule and float64-derived ᾱ. It solves the ODE the default official sampler solves: DDIM
(eta 0) with 50 steps treats x_T as the sample at t = 981 and ends at ᾱ_0 = 0.9985, so DPM-Solver++
starts at 981 too (timesteps on Karras et al.'s σ grid from 981 to 1, see `dpmpp_timesteps`) and its
last update lands on ᾱ_0 ("sigma_min"), not on σ = 0. ``tools/sampler_accuracy.py`` measures both
against a DDIM solution with every integer timestep.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # diffusers takes seconds to import: only when sampling (never for the classic engine)
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

NUM_TRAIN_TIMESTEPS = 1000
LINEAR_START = 0.0015
LINEAR_END = 0.0195
#: Where the ODE starts: x_T is the sample at the first timestep of the official 50-step DDIM.
ODE_START = 981
#: ρ of the DPM-Solver++ timestep grid: Karras et al. (2022)'s published value, not fitted here.
KARRAS_RHO = 7.0
#: Sampler names accepted by `sample_ode` (and ``--sampler``); ddim is the official one.
SAMPLERS = ("ddim", "dpmpp")

#: ``eps_fn(x_t, t_batch) -> eps``: x_t (B, C, h, w) float, t_batch (B,) int64, eps like x_t.
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def ldm_betas(
    num_timesteps: int = NUM_TRAIN_TIMESTEPS, start: float = LINEAR_START, end: float = LINEAR_END
) -> np.ndarray:
    """The LDM "linear" beta schedule, (T,) float64: a linspace of square roots, squared."""
    return np.linspace(start**0.5, end**0.5, num_timesteps, dtype=np.float64) ** 2


def ldm_schedule_buffers(num_timesteps: int = NUM_TRAIN_TIMESTEPS) -> dict[str, torch.Tensor]:
    """The 12 persistent schedule buffers of the official ``LatentDiffusion``, each (T,) float32.

    Computed in float64 and cast once, as the official ``register_schedule`` does; the names are
    the official state-dict names.
    """
    betas = ldm_betas(num_timesteps)
    alphas = 1.0 - betas
    cumprod = np.cumprod(alphas)
    cumprod_prev = np.append(1.0, cumprod[:-1])
    posterior_variance = betas * (1.0 - cumprod_prev) / (1.0 - cumprod)
    arrays = {
        "betas": betas,
        "alphas_cumprod": cumprod,
        "alphas_cumprod_prev": cumprod_prev,
        "sqrt_alphas_cumprod": np.sqrt(cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / cumprod - 1),
        "posterior_variance": posterior_variance,
        # The first posterior variance is 0; the official clamps before the log.
        "posterior_log_variance_clipped": np.log(np.maximum(posterior_variance, 1e-20)),
        "posterior_mean_coef1": betas * np.sqrt(cumprod_prev) / (1.0 - cumprod),
        "posterior_mean_coef2": (1.0 - cumprod_prev) * np.sqrt(alphas) / (1.0 - cumprod),
    }
    return {name: torch.tensor(value, dtype=torch.float32) for name, value in arrays.items()}


def official_ddim_timesteps(steps: int) -> list[int] | None:
    """The official "uniform" list (ascending), or None where the official sampler breaks.

    It breaks when the list would index t = 1000 (crash) or holds more than ``steps`` entries.
    """
    stride = NUM_TRAIN_TIMESTEPS // steps
    official = [t + 1 for t in range(0, NUM_TRAIN_TIMESTEPS, stride)]
    if len(official) != steps or official[-1] >= NUM_TRAIN_TIMESTEPS:
        return None
    return official


def ddim_timesteps(steps: int) -> list[int]:
    """Exactly ``steps`` distinct DDIM timesteps in ascending order, for 1 <= steps <= 1000.

    ``i * (1000 // steps) + 1`` for i < steps (the official list where the official code works, see
    the module docstring); for steps = 1000 all of 0..999, since 1..999 holds only 999 values.
    """
    if not 1 <= steps <= NUM_TRAIN_TIMESTEPS:
        raise ValueError(f"DDIM steps must be in 1..{NUM_TRAIN_TIMESTEPS}, got {steps}")
    if steps == NUM_TRAIN_TIMESTEPS:
        return list(range(NUM_TRAIN_TIMESTEPS))
    stride = NUM_TRAIN_TIMESTEPS // steps
    return [i * stride + 1 for i in range(steps)]


def make_scheduler(steps: int) -> DDIMScheduler:
    """A diffusers ``DDIMScheduler`` set to the official LDM DDIM with ``steps`` steps.

    Its ``timesteps`` (descending) equal ``ddim_timesteps(steps)`` reversed; this is checked.
    """
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        trained_betas=ldm_betas().astype(np.float32),
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=0 if steps == NUM_TRAIN_TIMESTEPS else 1,
        prediction_type="epsilon",
        timestep_spacing="leading",
        thresholding=False,
    )
    # diffusers' float32 cumprod differs from LDM's float64 one in the last bits; use LDM's.
    scheduler.alphas_cumprod = ldm_schedule_buffers()["alphas_cumprod"]
    scheduler.final_alpha_cumprod = scheduler.alphas_cumprod[0]
    scheduler.set_timesteps(steps)
    expected = ddim_timesteps(steps)[::-1]
    if scheduler.timesteps.tolist() != expected:
        raise RuntimeError(f"diffusers DDIMScheduler timesteps differ from the official ones for S={steps}")
    return scheduler


def dpmpp_timesteps(steps: int) -> list[int]:
    """``steps`` distinct timesteps from ODE_START (981) down to 1, descending, on Karras et al.'s grid:
    σ_i = (σ_max^(1/ρ) + i/(S−1)·(σ_min^(1/ρ) − σ_max^(1/ρ)))^ρ with σ = √((1−ᾱ)/ᾱ), ρ = `KARRAS_RHO`,
    σ_max = σ(981), σ_min = σ(1), each rounded to the timestep of nearest σ.

    Why this grid: ε enters the solution weighted by Δσ, so the steps where σ is large need to be short
    too, while steps evenly spaced in log-SNR put most steps near t = 0. On the tiny golden weights
    DPM-Solver++ 20 lands 1.6× closer to the 981-step solution on this grid than on the log-SNR one,
    on the full-size random UNet 1.7× (tools/sampler_accuracy.py). Where rounding would merge two steps
    (many steps), later steps move down by one.
    """
    if not 1 <= steps <= ODE_START:
        raise ValueError(f"DPM-Solver++ steps must be in 1..{ODE_START}, got {steps}")
    if steps == 1:
        return [ODE_START]
    cumprod = ldm_schedule_buffers()["alphas_cumprod"].double().numpy()[: ODE_START + 1]
    sigma = np.sqrt((1.0 - cumprod) / cumprod)  # increasing with t
    hi, lo = sigma[ODE_START] ** (1 / KARRAS_RHO), sigma[1] ** (1 / KARRAS_RHO)
    targets = (hi + np.linspace(0.0, 1.0, steps) * (lo - hi)) ** KARRAS_RHO
    grid = [int(np.argmin(np.abs(np.log(sigma[1:]) - np.log(v)))) + 1 for v in targets]
    for i in range(1, steps):  # strictly descending, leaving room for the steps still to come
        grid[i] = max(min(grid[i], grid[i - 1] - 1), steps - i)
    return grid


def make_dpmpp_scheduler(steps: int) -> DPMSolverMultistepScheduler:
    """diffusers' DPM-Solver++ 2M over the LDM schedule with ``steps`` model calls, on `dpmpp_timesteps`.

    The last update lands on ᾱ_0 like DDIM's (``sigma_min``); below 15 steps the last two updates are
    first order (diffusers' ``lower_order_final``), for stability.
    """
    from diffusers import DPMSolverMultistepScheduler

    timesteps = dpmpp_timesteps(steps)
    scheduler = DPMSolverMultistepScheduler(
        num_train_timesteps=NUM_TRAIN_TIMESTEPS,
        trained_betas=ldm_betas().astype(np.float32),
        solver_order=2,
        prediction_type="epsilon",
        thresholding=False,
        algorithm_type="dpmsolver++",
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="sigma_min",
    )
    # As for DDIM: LDM's float64-derived cumprod, and the solver's tables derived from it.
    cumprod = ldm_schedule_buffers()["alphas_cumprod"]
    scheduler.alphas_cumprod = cumprod
    scheduler.alpha_t = cumprod.sqrt()
    scheduler.sigma_t = (1 - cumprod).sqrt()
    scheduler.lambda_t = scheduler.alpha_t.log() - scheduler.sigma_t.log()
    scheduler.set_timesteps(timesteps=timesteps)
    return scheduler


def ddim_update(
    x_t: torch.Tensor, eps: torch.Tensor, alpha: float, alpha_prev: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Closed-form deterministic DDIM step (eta 0), reference §3.2 steps 4-5.

    Returns ``(x_prev, pred_x0)`` for cumulative alphas ``alpha`` (at t) and ``alpha_prev``.
    Kept as the reference the diffusers step is tested against.
    """
    pred_x0 = (x_t - (1.0 - alpha) ** 0.5 * eps) / alpha**0.5
    x_prev = alpha_prev**0.5 * pred_x0 + (1.0 - alpha_prev) ** 0.5 * eps
    return x_prev, pred_x0


#: Coefficients per step of `linear_update`.
UPDATE_COEFFICIENTS = 6


def linear_update(
    x: torch.Tensor, eps: torch.Tensor, k: torch.Tensor, x0_prev: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of either sampler as tensor arithmetic (no Python scalars, so one compiled graph serves
    every step): x0 = (x − k0·ε)/k1, x_next = k2·x + k3·x0 + k4·x0_prev + k5·ε.

    x, eps, x0_prev (B, C, h, w) float32; k (6,) float32 from `step_plan`. Returns (x_next, x0). DDIM's
    terms come in diffusers' order and its zero coefficients add exact zeros, so the result equals
    ``DDIMScheduler.step`` bit for bit; DPM-Solver++ 2M's second-order step is regrouped (m0, m1 terms
    instead of D0, D1), equal to diffusers' within float32 rounding.
    """
    x0 = (x - k[0] * eps) / k[1]
    return k[2] * x + k[3] * x0 + k[4] * x0_prev + k[5] * eps, x0


@dataclass(frozen=True)
class StepPlan:
    """A sampler run as data: `timesteps` visited (descending) and `coefficients` (S, 6) float32, the k
    of `linear_update` at each step, taken from diffusers' scheduler tables."""

    timesteps: list[int]
    coefficients: torch.Tensor


def step_plan(sampler: str, steps: int) -> StepPlan:
    """The `StepPlan` of "ddim" (official, eta 0) or "dpmpp" (DPM-Solver++ 2M) with `steps` model calls."""
    if sampler == "ddim":
        return _ddim_plan(make_scheduler(steps))
    if sampler == "dpmpp":
        return _dpmpp_plan(make_dpmpp_scheduler(steps))
    raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")


def _ddim_plan(scheduler: DDIMScheduler) -> StepPlan:
    # The scalars of DDIMScheduler.step (eta 0), computed with the same float32 tensor operations.
    stride = scheduler.config.num_train_timesteps // scheduler.num_inference_steps
    rows = []
    zero = torch.tensor(0.0)
    for t in scheduler.timesteps.tolist():
        alpha = scheduler.alphas_cumprod[t]
        prev = t - stride
        alpha_prev = scheduler.alphas_cumprod[prev] if prev >= 0 else scheduler.final_alpha_cumprod
        beta = 1 - alpha
        rows.append([beta**0.5, alpha**0.5, zero, alpha_prev**0.5, zero, (1 - alpha_prev - zero**2) ** 0.5])
    return StepPlan(scheduler.timesteps.tolist(), torch.tensor(rows, dtype=torch.float32))


def _dpmpp_plan(scheduler: DPMSolverMultistepScheduler) -> StepPlan:
    # The scalars of DPMSolverMultistepScheduler.step (dpmsolver++, midpoint, order 2, sigma_min end).
    sigmas = scheduler.sigmas
    n = len(scheduler.timesteps)

    def alpha_sigma(i: int) -> tuple[torch.Tensor, torch.Tensor]:
        alpha = 1 / ((sigmas[i] ** 2 + 1) ** 0.5)
        return alpha, sigmas[i] * alpha

    zero = torch.tensor(0.0)
    rows = []
    for i in range(n):
        alpha_s0, sigma_s0 = alpha_sigma(i)
        alpha_t, sigma_t = alpha_sigma(i + 1)
        lambda_s0 = torch.log(alpha_s0) - torch.log(sigma_s0)
        h = torch.log(alpha_t) - torch.log(sigma_t) - lambda_s0
        a = alpha_t * (torch.exp(-h) - 1.0)
        # First order at the first step and (diffusers' lower_order_final, below 15 steps) the last.
        if i == 0 or (i == n - 1 and scheduler.config.lower_order_final and n < 15):
            rows.append([sigma_s0, alpha_s0, sigma_t / sigma_s0, -a, zero, zero])
            continue
        alpha_s1, sigma_s1 = alpha_sigma(i - 1)
        r0 = (lambda_s0 - (torch.log(alpha_s1) - torch.log(sigma_s1))) / h
        half_d1 = 0.5 * a * (1.0 / r0)  # D1 = (m0 − m1)/r0 enters with −½·a
        rows.append([sigma_s0, alpha_s0, sigma_t / sigma_s0, -a - half_d1, half_d1, zero])
    return StepPlan(scheduler.timesteps.tolist(), torch.tensor(rows, dtype=torch.float32))


def two_model_chooser(proportion_of_model1: float) -> Callable[[int], int]:
    """The official two-model switch: step t uses model 2 (h0) when ``t >= 1000 * p``, else model 1.

    ``t`` is the scalar step, so the rule works for any batch size (the official compares a tensor).
    """
    threshold = NUM_TRAIN_TIMESTEPS * proportion_of_model1

    def choose(t: int) -> int:
        return 2 if t >= threshold else 1

    return choose


@dataclass
class SampleTrajectory:
    """Output of :func:`sample_ode` / :func:`ddim_sample`.

    ``samples`` is the final latent. With ``record=True``: ``x_inter`` = [x_T, then x after each step]
    (S + 1 entries) and, for DDIM only, ``pred_x0`` = the S x0 predictions, both in sampling order
    (largest t first); unlike the official ``intermediates`` there is no x_T placeholder in ``pred_x0``.
    ``timesteps`` are the steps visited (descending) and ``choices`` the model picked at each.
    """

    samples: torch.Tensor
    timesteps: list[int]
    choices: list[Hashable] = field(default_factory=list)
    x_inter: list[torch.Tensor] = field(default_factory=list)
    pred_x0: list[torch.Tensor] = field(default_factory=list)


#: The name the engine and the tests know the DDIM result by.
DdimResult = SampleTrajectory


@torch.no_grad()
def sample_ode(
    eps_fn: EpsFn | Mapping[Hashable, EpsFn],
    x_T: torch.Tensor,
    steps: int,
    sampler: str = "ddim",
    *,
    choose: Callable[[int], Hashable] | None = None,
    record: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> SampleTrajectory:
    """Solve the probability-flow ODE from ``x_T`` (B, C, h, w) float with ``steps`` model calls.

    ``sampler`` is "ddim" (the official DDIM, eta 0) or "dpmpp" (DPM-Solver++ 2M); the other
    arguments are those of :func:`ddim_sample`.
    """
    if sampler == "ddim":
        return ddim_sample(eps_fn, x_T, steps, choose=choose, record=record, progress=progress)
    if sampler != "dpmpp":
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return _run(make_dpmpp_scheduler(steps), eps_fn, x_T, choose, record, progress, {})


@torch.no_grad()
def ddim_sample(
    eps_fn: EpsFn | Mapping[Hashable, EpsFn],
    x_T: torch.Tensor,
    timesteps: int | Sequence[int],
    *,
    choose: Callable[[int], Hashable] | None = None,
    record: bool = False,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SampleTrajectory:
    """Run DDIM from ``x_T`` (B, C, h, w) float over ``timesteps``.

    ``timesteps`` is a step count S or the list ``ddim_timesteps(S)`` (either order). Other lists are
    refused: diffusers' step finds alpha_prev at ``t - 1000 // S``, so it can only walk that grid.

    ``eps_fn(x_t, t_batch)`` predicts the noise; ``t_batch`` is (B,) int64 on x_T's device. For the
    two-model mode pass a mapping of eps functions and ``choose(t) -> key`` (e.g.
    :func:`two_model_chooser`), evaluated once per step on the scalar t. ``eta`` > 0 adds noise from
    ``generator`` (diffusers' draw order, not the official one); the official default is 0.
    ``progress(i, steps)`` is called after each step.
    """
    steps = timesteps if isinstance(timesteps, int) else len(timesteps)
    if not isinstance(timesteps, int) and sorted(int(t) for t in timesteps) != ddim_timesteps(steps):
        raise ValueError(f"timesteps must be ddim_timesteps({steps}) = {ddim_timesteps(steps)[:3]}...")
    return _run(
        make_scheduler(steps), eps_fn, x_T, choose, record, progress, {"eta": eta, "generator": generator}
    )


def _run(
    scheduler: DDIMScheduler | DPMSolverMultistepScheduler,
    eps_fn: EpsFn | Mapping[Hashable, EpsFn],
    x_T: torch.Tensor,
    choose: Callable[[int], Hashable] | None,
    record: bool,
    progress: Callable[[int, int], None] | None,
    step_kwargs: dict[str, object],
) -> SampleTrajectory:
    """The sampling loop shared by both schedulers (a fresh, stateful scheduler per call)."""
    if isinstance(eps_fn, Mapping) and choose is None:
        raise ValueError("a mapping of eps functions needs a choose(t) function")
    visited = [int(t) for t in scheduler.timesteps]
    result = SampleTrajectory(samples=x_T, timesteps=visited)
    if record:
        result.x_inter.append(x_T)
    x = x_T
    for i, t in enumerate(visited):
        which = choose(t) if choose is not None else None
        fn = eps_fn[which] if isinstance(eps_fn, Mapping) else eps_fn
        t_batch = torch.full((x.shape[0],), t, dtype=torch.long, device=x.device)
        eps = fn(x, t_batch)
        out = scheduler.step(eps, t, x, **step_kwargs)
        x = out.prev_sample
        result.choices.append(which)
        if record:
            result.x_inter.append(x)
            if hasattr(out, "pred_original_sample"):
                result.pred_x0.append(out.pred_original_sample)
        if progress is not None:
            progress(i + 1, len(visited))
    result.samples = x
    return result
