"""The published checkpoints' own samplers, as ComfyUI sampler functions (KSampler's sampler_name, KSamplerSelect):
pixart_dmd, pixart_lcm and pixart_sa_solver. Each reproduces what diffusers' pipeline does with the checkpoint's
scheduler (pixart.recipes), including the random draws: ComfyUI's seeded initial noise is the first draw of a CPU
generator seeded with the seed, as in diffusers' pipelines, and these samplers take every later draw from the same
stream, in diffusers' order (ComfyUI's own noise samplers start a new stream, so its `lcm` and `sa_solver` cannot
match: checked against diffusers 0.42.1).

References: DMD, Yin et al. 2024 (one-step distillation), as PixArt-sigma's app/app_pixart_dmd.py runs it (DDPMScheduler,
timesteps=[400], the pipeline returning the predicted x0); LCM, Luo et al. 2023 (arXiv:2310.04378), diffusers'
LCMScheduler (boundary condition with sigma_data 0.5, timestep scaling 10); SA-Solver, Xue et al. 2023
(arXiv:2309.05019), diffusers' SASolverScheduler in data prediction with predictor/corrector order 2, the order-2
coefficients computed by ComfyUI's own comfy.k_diffusion.sa_solver.
"""
from __future__ import annotations

import math

import torch
from comfy.k_diffusion import sa_solver

from ..pixart.recipes import DMD, LCM, SA_SOLVER

LCM_SIGMA_DATA = 0.5
LCM_TIMESTEP_SCALING = 10.0
SA_SOLVER_ORDER = 2
SA_SOLVER_TAU_WINDOW = (200, 800)  # tau 1 for timesteps in this closed interval, 0 elsewhere (diffusers' default)


class SeedStream:
    """The random draws after ComfyUI's seeded initial noise, from one CPU generator seeded with the seed: the initial
    noise is its first draw (comfy.sample.prepare_noise), the samplers' noise the ones after, as in diffusers."""

    def __init__(self, model, x: torch.Tensor, extra_args: dict):
        self.shape, self.device, self.dtype = x.shape, x.device, x.dtype
        seed = extra_args.get("seed")
        self.generator = torch.Generator("cpu")
        if seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(seed)
            noise = getattr(model, "noise", None)
            torch.randn(tuple(noise.shape) if noise is not None else self.shape, generator=self.generator)

    def __call__(self) -> torch.Tensor:
        return torch.randn(self.shape, generator=self.generator).to(self.device, self.dtype)


def _model_sampling(model):
    return model.inner_model.model_patcher.get_model_object("model_sampling")


def _step(callback, x, i, sigma, denoised):
    if callback is not None:
        callback({"x": x, "i": i, "sigma": sigma, "sigma_hat": sigma, "denoised": denoised})


@torch.no_grad()
def sample_pixart_dmd(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """One step: the model's x0 prediction for pure unit noise fed in as the sample at sigmas[0] (t = 400 with the
    pixart_dmd scheduler). ComfyUI scales its noise by sigma; the DiT must see the unit noise itself, i.e. a
    k-diffusion input of noise * sqrt(1 + sigma^2)."""
    extra_args = extra_args or {}
    sigma = sigmas[0]
    noise = getattr(model, "noise", None)
    if noise is not None:
        latent = getattr(model, "latent_image", None)
        x = noise.to(x) * (1 + sigma ** 2).sqrt() + (0 if latent is None else latent.to(x))
    denoised = model(x, sigma * x.new_ones([x.shape[0]]), **extra_args)
    _step(callback, x, 0, sigma, denoised)
    return denoised


@torch.no_grad()
def sample_pixart_lcm(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """LCM multistep sampling: at each step the consistency function c_out * x0 + c_skip * sample (the timestep scaled
    by 10), then fresh noise to the next step's level, none after the last."""
    extra_args = extra_args or {}
    model_sampling, noise = _model_sampling(model), SeedStream(model, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    for i in range(len(sigmas) - 1):
        sigma = sigmas[i]
        x0 = model(x, sigma * s_in, **extra_args)
        scaled = float(model_sampling.timestep(sigma)) * LCM_TIMESTEP_SCALING
        c_skip = LCM_SIGMA_DATA ** 2 / (scaled ** 2 + LCM_SIGMA_DATA ** 2)
        c_out = scaled / math.sqrt(scaled ** 2 + LCM_SIGMA_DATA ** 2)
        denoised = c_out * x0 + c_skip * x / (1 + sigma ** 2).sqrt()  # the boundary condition on the VP sample
        _step(callback, x, i, sigma, denoised)
        x = denoised if i == len(sigmas) - 2 else denoised + sigmas[i + 1] * noise()
    return x


def _sa_solver_tau(model_sampling, sigma) -> float:
    low, high = SA_SOLVER_TAU_WINDOW
    return 1.0 if low <= float(model_sampling.timestep(sigma)) <= high else 0.0


@torch.no_grad()
def sample_pixart_sa_solver(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """SA-Solver in data prediction, predictor and corrector of order 2, as diffusers' SASolverScheduler steps: the
    model is evaluated at the predicted sample; from the second step on, the corrector recomputes the current state
    from the previous one with the new x0 (and the previous step's tau and noise); a noise draw every step; the
    predictor order drops to 1 on the first step (warm-up) and the last (lower_order_final). The last sigma is the
    grid's t = 0 level (pixart_sa_solver scheduler), and the result the sample there in VP form, as diffusers returns."""
    extra_args = extra_args or {}
    model_sampling, draw = _model_sampling(model), SeedStream(model, x, extra_args)
    s_in = x.new_ones([x.shape[0]])
    lambdas = -sigmas.log()  # half log-SNR of an epsilon model
    steps = len(sigmas) - 1
    x_pred, x, noise, tau, corrector_order = x, None, 0.0, 0.0, 0
    x0s: list[torch.Tensor] = []
    for i in range(steps):
        x0 = model(x_pred, sigmas[i] * s_in, **extra_args)
        _step(callback, x_pred, i, sigmas[i], x0)
        x0s = (x0s + [x0])[-SA_SOLVER_ORDER:]
        if i == 0:
            x = x_pred
        else:  # corrector from the previous state to this sigma, with the previous predictor's tau and noise
            b = sa_solver.compute_stochastic_adams_b_coeffs(sigmas[i], lambdas[i - corrector_order + 1:i + 1],
                                                            lambdas[i - 1], lambdas[i], tau, simple_order_2=True,
                                                            is_corrector_step=True)
            h = lambdas[i] - lambdas[i - 1]
            x = sigmas[i] / sigmas[i - 1] * (-(tau ** 2) * h).exp() * x + torch.tensordot(
                torch.stack(x0s[-corrector_order:], dim=1), b, dims=([1], [0])) + noise
        xi = draw()  # every step, also where tau is 0, as diffusers draws
        predictor_order = min(SA_SOLVER_ORDER, steps - i, i + 1)
        corrector_order = min(SA_SOLVER_ORDER, steps - i + 1, i + 2)
        tau = _sa_solver_tau(model_sampling, sigmas[i])
        h = lambdas[i + 1] - lambdas[i]
        b = sa_solver.compute_stochastic_adams_b_coeffs(sigmas[i + 1], lambdas[i - predictor_order + 1:i + 1],
                                                        lambdas[i], lambdas[i + 1], tau, simple_order_2=True,
                                                        is_corrector_step=False)
        noise = sigmas[i + 1] * (-2 * tau ** 2 * h).expm1().neg().sqrt() * xi
        x_pred = sigmas[i + 1] / sigmas[i] * (-(tau ** 2) * h).exp() * x + torch.tensordot(
            torch.stack(x0s[-predictor_order:], dim=1), b, dims=([1], [0])) + noise
    return x_pred / (1 + sigmas[-1] ** 2).sqrt()


SAMPLERS = {DMD: sample_pixart_dmd, LCM: sample_pixart_lcm, SA_SOLVER: sample_pixart_sa_solver}


def register() -> None:
    """Add the samplers to ComfyUI's sampler list once (the host has no registration hook: KSampler resolves a name
    as comfy.k_diffusion.sampling.sample_<name>, and KSampler.SAMPLERS is the list its nodes show)."""
    import comfy.k_diffusion.sampling as k_sampling
    import comfy.samplers

    for name, function in SAMPLERS.items():
        if not hasattr(k_sampling, f"sample_{name}"):
            setattr(k_sampling, f"sample_{name}", function)
        for names in {id(comfy.samplers.KSampler.SAMPLERS): comfy.samplers.KSampler.SAMPLERS,
                      id(comfy.samplers.SAMPLER_NAMES): comfy.samplers.SAMPLER_NAMES}.values():
            if name not in names:
                names.append(name)
