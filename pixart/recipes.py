"""How each published PixArt checkpoint is meant to be sampled, as its authors run it (diffusers' pipelines with the
checkpoint's own scheduler), by name, so that a user picks the recipe rather than the numbers.

The samplers and schedulers named here are registered in ComfyUI by the nodes (nodes/samplers.py, nodes/scheduler.py)
and can be picked in core KSampler / KSamplerSelect / BasicScheduler too.
"""
from __future__ import annotations

from dataclasses import dataclass

from .config import ALPHA, SIGMA, DiTConfig

CUSTOM = "custom"  # the sampler node's own steps / cfg / sampler / scheduler inputs

# The names the recipes' samplers and schedulers go by in ComfyUI (one name each where a sampler and its schedule belong
# together); nodes/samplers.py and nodes/scheduler.py register them under these names.
REFERENCE = "pixart_reference"  # scheduler: diffusers' PixArt timesteps (pixart.schedule.reference_timesteps)
SA_SOLVER = "pixart_sa_solver"
LCM = "pixart_lcm"  # sampler; and the scheduler of the PixArt-α authors' LCM timesteps
LCM_DIFFUSERS = "pixart_lcm_diffusers"  # scheduler: today's diffusers LCMScheduler timesteps
DMD = "pixart_dmd"
DPM_SOLVER_2M = "dpmpp_2m"  # ComfyUI's own DPM-Solver++ 2M


@dataclass(frozen=True)
class Recipe:
    name: str
    summary: str
    steps: int
    cfg: float
    sampler: str
    scheduler: str
    family: str | None = None  # the checkpoints it was published for
    trained_resolution: int | None = None

    def mismatch(self, config: DiTConfig) -> str | None:
        """What about this model differs from the checkpoints the recipe was published for, or None."""
        wrong = []
        if self.family is not None and config.family != self.family:
            wrong.append(f"family {config.family}")
        if self.trained_resolution is not None and config.trained_resolution != self.trained_resolution:
            wrong.append(f"trained size {config.trained_resolution} px")
        return ", ".join(wrong) or None


RECIPES = {recipe.name: recipe for recipe in (
    Recipe("sigma_dpm_solver", "PixArt-Σ/α default: DPM-Solver++ 2M, 20 steps, cfg 4.5 (diffusers' pipeline)",
           20, 4.5, DPM_SOLVER_2M, REFERENCE),
    Recipe("sigma_sa_solver", "PixArt-Σ SA-Solver as the PixArt-Σ app runs it: 25 steps, cfg 3, predictor/corrector "
           "order 2/2, tau 1 for t in [200, 800], data prediction", 25, 3.0, SA_SOLVER, SA_SOLVER,
           family=SIGMA),
    Recipe("alpha_lcm_1024", "PixArt-α LCM 1024 (PixArt-LCM-XL-2-1024-MS) as its authors' inference_lcm.py runs it: "
           "their LCMScheduler's timesteps (999, 759, 519, 279 for 4 steps), 4 steps, no guidance",
           4, 1.0, LCM, LCM, family=ALPHA, trained_resolution=1024),
    Recipe("alpha_dmd_512", "PixArt-α DMD 512 (PixArt-Alpha-DMD-XL-2-512x512): one step at t=400 from pure noise, "
           "no guidance", 1, 1.0, DMD, DMD, family=ALPHA, trained_resolution=512),
)}
RECIPE_CHOICES = [CUSTOM, *RECIPES]
