"""The reference PixArt timestep schedule as a ComfyUI scheduler, so KSampler users get diffusers' schedule too."""
from __future__ import annotations

import comfy.samplers
import torch

from ..pixart.schedule import reference_timesteps

REFERENCE_SCHEDULER = "pixart_reference"


def reference_scheduler(model_sampling, steps: int) -> torch.Tensor:
    """Sigmas at round(linspace(0, 999, steps + 1)) reversed minus the last, then 0. -> (steps + 1,)."""
    table = model_sampling.sigmas  # (1000,) one sigma per training timestep
    timesteps = reference_timesteps(steps, train_steps=len(table))
    sigmas = table[torch.tensor(timesteps, device=table.device)].float()
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def register() -> None:
    """Add the scheduler to ComfyUI's registry once (KSampler's list is the same list object)."""
    if REFERENCE_SCHEDULER not in comfy.samplers.SCHEDULER_HANDLERS:
        comfy.samplers.SCHEDULER_HANDLERS[REFERENCE_SCHEDULER] = comfy.samplers.SchedulerHandler(reference_scheduler)
    for names in {id(comfy.samplers.SCHEDULER_NAMES): comfy.samplers.SCHEDULER_NAMES,
                  id(comfy.samplers.KSampler.SCHEDULERS): comfy.samplers.KSampler.SCHEDULERS}.values():
        if REFERENCE_SCHEDULER not in names:
            names.append(REFERENCE_SCHEDULER)
