"""PixArt's noise schedule: DDPM betas linear from 1e-4 to 0.02 over 1000 training steps (epsilon prediction), and the
reference sampling timesteps of diffusers' PixArt pipelines (DPM-Solver++ with "linspace" spacing) and of the published
distilled checkpoints.
"""
from __future__ import annotations

TRAIN_STEPS = 1000
BETA_START = 1e-4
BETA_END = 0.02


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


# --- the published checkpoints' own sampling grids ---------------------------------------------------------------

DMD_TIMESTEP = 400  # PixArt-α DMD: one step from pure unit noise fed in as the sample at t = 400
LCM_ORIGINAL_STEPS = 50  # PixArt-α LCM was distilled on 50 of the 1000 timesteps (LCMScheduler original_inference_steps)


def lcm_timesteps(steps: int, original_steps: int = LCM_ORIGINAL_STEPS, train_steps: int = TRAIN_STEPS,
                  rule: str = "official") -> list[int]:
    """An LCM schedule: `steps` timesteps of the distilled grid [k-1, 2k-1, ..., T-1] (k = T / original_steps), from
    the top.

    rule "official": the PixArt-α authors' LCMScheduler.set_timesteps(steps, original_steps) (PixArt-alpha
    diffusion/lcm_scheduler.py, as scripts/inference_lcm.py calls it): every (original_steps // steps)-th grid step,
    [999, 759, 519, 279] for 4 steps. rule "diffusers": today's diffusers LCMScheduler, the grid at
    floor(linspace(0, original_steps, steps, endpoint=False)): [999, 759, 499, 259] for 4 steps.
    """
    if not 1 <= steps <= original_steps:
        raise ValueError(f"LCM steps must be between 1 and {original_steps}, got {steps}.")
    k = train_steps // original_steps
    grid = [(i + 1) * k - 1 for i in range(original_steps)][::-1]  # (original_steps,) from T-1 down to k-1
    if rule == "official":
        return grid[:: original_steps // steps][:steps]
    if rule == "diffusers":
        return [grid[int(i * original_steps / steps)] for i in range(steps)]
    raise ValueError(f"LCM timestep rule '{rule}' is unknown; use 'official' or 'diffusers'.")
