"""PixArt's noise schedule: DDPM linear betas 1e-4..0.02 over 1000 steps (epsilon prediction), and the
reference sampling timesteps of diffusers' PixArt pipelines (DPM-Solver++ with "linspace" spacing).
"""
from __future__ import annotations

import torch

TRAIN_STEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02


def linear_betas(train_steps: int = TRAIN_STEPS, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(T,) betas, linear in beta (not in sqrt(beta) as Stable Diffusion's 'scaled linear')."""
    return torch.linspace(BETA_START, BETA_END, train_steps, dtype=dtype)


def alphas_cumprod(train_steps: int = TRAIN_STEPS, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.cumprod(1.0 - linear_betas(train_steps, dtype), dim=0)


def train_sigmas(train_steps: int = TRAIN_STEPS, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """(T,) noise level sigma_t = sqrt((1 - a_t) / a_t) for each training timestep."""
    ac = alphas_cumprod(train_steps, dtype)
    return ((1.0 - ac) / ac).sqrt()


def reference_timesteps(steps: int, train_steps: int = TRAIN_STEPS) -> list[int]:
    """round(linspace(0, T-1, steps+1)) reversed, last one dropped: [999, ..., small] (steps values).

    Rounds half to even and builds the grid as i * step like numpy's linspace, so the list equals
    diffusers' DPMSolverMultistepScheduler(timestep_spacing="linspace") exactly.
    """
    if steps < 1:
        raise ValueError(f"steps must be at least 1, got {steps}.")
    step = (train_steps - 1) / steps
    grid = [round(i * step) for i in range(steps)] + [train_steps - 1]
    return grid[::-1][:-1]


def reference_sigmas(steps: int, train_steps: int = TRAIN_STEPS) -> torch.Tensor:
    """(steps + 1,) sigmas at the reference timesteps, ending at 0 (the final step denoises fully)."""
    table = train_sigmas(train_steps)
    sigmas = table[torch.tensor(reference_timesteps(steps, train_steps))]
    return torch.cat([sigmas, sigmas.new_zeros(1)])


# --- the published checkpoints' own sampling grids ---------------------------------------------------------------

DMD_TIMESTEP = 400  # PixArt-α DMD: one step from pure unit noise fed in as the sample at t = 400
LCM_ORIGINAL_STEPS = 50  # PixArt-α LCM was distilled on 50 of the 1000 timesteps (LCMScheduler original_inference_steps)


def lcm_timesteps(steps: int, original_steps: int = LCM_ORIGINAL_STEPS, train_steps: int = TRAIN_STEPS) -> list[int]:
    """LCMScheduler's timesteps: `steps` of the distilled grid [k-1, 2k-1, ..., T-1] (k = T / original_steps), taken
    from the top at floor(linspace(0, original_steps, steps, endpoint=False)): [999, 759, 499, 259] for 4 steps."""
    if not 1 <= steps <= original_steps:
        raise ValueError(f"LCM steps must be between 1 and {original_steps}, got {steps}.")
    k = train_steps // original_steps
    grid = [(i + 1) * k - 1 for i in range(original_steps)][::-1]  # (original_steps,) from T-1 down to k-1
    return [grid[int(i * original_steps / steps)] for i in range(steps)]
