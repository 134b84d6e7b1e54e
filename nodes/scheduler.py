"""PixArt's sampling grids as ComfyUI schedulers, so KSampler and BasicScheduler users get them too:

- pixart_reference: diffusers' PixArt pipelines' timesteps round(linspace(0, 999, steps+1)) reversed, last dropped,
  then sigma 0 (DPM-Solver++ 2M, the default recipe);
- pixart_sa_solver: the same timesteps ending at the t = 0 noise level instead of 0 (diffusers' SASolverScheduler);
- pixart_lcm: the PixArt-α authors' LCMScheduler timesteps on the 50-step distilled grid, every (50 // steps)-th
  from the top ([999, 759, 519, 279] for 4), then 0 (PixArt-alpha scripts/inference_lcm.py);
- pixart_lcm_diffusers: today's diffusers LCMScheduler timesteps ([999, 759, 499, 259] for 4), then 0;
- pixart_dmd: the DMD checkpoint's single step at t = 400, then 0 (whatever the step count).
"""
from __future__ import annotations

import comfy.samplers
import torch

from ..pixart.recipes import DMD, LCM, LCM_DIFFUSERS, REFERENCE, SA_SOLVER
from ..pixart.schedule import DMD_TIMESTEP, lcm_timesteps, reference_timesteps


def _at(model_sampling, timesteps: list[int], last: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmas of the model's table at integer timesteps, then `last` (default 0). -> (len(timesteps) + 1,)"""
    table = model_sampling.sigmas  # (1000,) one sigma per training timestep
    sigmas = table[torch.tensor(timesteps, device=table.device)].float()
    return torch.cat([sigmas, sigmas.new_zeros(1) if last is None else last.reshape(1).float()])


def reference_scheduler(model_sampling, steps: int) -> torch.Tensor:
    return _at(model_sampling, reference_timesteps(steps, train_steps=len(model_sampling.sigmas)))


def sa_solver_scheduler(model_sampling, steps: int) -> torch.Tensor:
    return _at(model_sampling, reference_timesteps(steps, train_steps=len(model_sampling.sigmas)),
               last=model_sampling.sigmas[0])


def lcm_scheduler(model_sampling, steps: int) -> torch.Tensor:
    return _at(model_sampling, lcm_timesteps(steps, train_steps=len(model_sampling.sigmas), rule="official"))


def lcm_diffusers_scheduler(model_sampling, steps: int) -> torch.Tensor:
    return _at(model_sampling, lcm_timesteps(steps, train_steps=len(model_sampling.sigmas), rule="diffusers"))


def dmd_scheduler(model_sampling, steps: int) -> torch.Tensor:
    return _at(model_sampling, [DMD_TIMESTEP])


SCHEDULERS = {REFERENCE: reference_scheduler, SA_SOLVER: sa_solver_scheduler, LCM: lcm_scheduler,
              LCM_DIFFUSERS: lcm_diffusers_scheduler, DMD: dmd_scheduler}


def register() -> None:
    """Add the schedulers to ComfyUI's registry once (the host has no registration hook; KSampler's list is the same
    list object as SCHEDULER_NAMES on the hosts that have both)."""
    for name, handler in SCHEDULERS.items():
        if name not in comfy.samplers.SCHEDULER_HANDLERS:
            comfy.samplers.SCHEDULER_HANDLERS[name] = comfy.samplers.SchedulerHandler(handler)
        for names in {id(comfy.samplers.SCHEDULER_NAMES): comfy.samplers.SCHEDULER_NAMES,
                      id(comfy.samplers.KSampler.SCHEDULERS): comfy.samplers.KSampler.SCHEDULERS}.values():
            if name not in names:
                names.append(name)
