"""Two-stage expert pairs: one MODEL that runs a stage-1 DiT at timesteps at or above a switch and a stage-2 DiT
below it, within one sampling run (the published 900M PixArt-Σ fine-tunes: stage 2 owns the last 400 timesteps).

The stage-1 MODEL is cloned; the stage-2 MODEL rides along as an additional model, so ComfyUI loads and offloads
both for the run, and an APPLY_MODEL wrapper hands each step to the DiT whose timestep range it falls in. Both
stages see the run's transformer options (KV compression, the per-run caption cache: captions are cached per DiT)
and each keeps its own weight patches (LoRAs) and its own apply-model wrappers (e.g. torch.compile).
"""
from __future__ import annotations

import comfy.patcher_extension
from comfy_api.latest import io

from . import host
from .dit_model import pixart_dit

STAGES_KEY = "pixart_two_stage"
PUBLISHED_SWITCH = 400  # the 900M PixArt-Σ stage-2 experts are trained for timesteps below 400


def _stage_two_options(transformer_options: dict, stage_two) -> dict:
    """The run's transformer options with stage 2's own apply-model wrappers instead of stage 1's."""
    options = dict(transformer_options)
    options["wrappers"] = {kind: {key: list(found) for key, found in by_key.items()}
                           for kind, by_key in stage_two.wrappers.items()}
    return options


def two_stage_model(stage_one, stage_two, switch_timestep: int):
    """A clone of `stage_one` that runs `stage_two` for timesteps below `switch_timestep`."""
    first = pixart_dit(stage_one, "the first stage must be a PixArt MODEL from the PixArt DiT Loader").config
    second = pixart_dit(stage_two, "the second stage must be a PixArt MODEL from the PixArt DiT Loader").config
    mismatched = [name for name in ("family", "in_channels", "caption_channels", "patch_size")
                  if getattr(first, name) != getattr(second, name)]
    if mismatched:
        raise ValueError(f"The two stages do not fit together ({first.describe()} vs {second.describe()}: different "
                         f"{', '.join(mismatched)}); connect two stages of the same PixArt family.")
    if not 0 < switch_timestep < 1000:
        raise ValueError(f"switch_timestep must lie between 1 and 999, got {switch_timestep}.")

    def run_stage(executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options=None, **kwargs):
        model = executor.class_obj
        if float(model.model_sampling.timestep(t).max()) >= switch_timestep:
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        return stage_two.model.apply_model(x, t, c_concat, c_crossattn, control,
                                           _stage_two_options(transformer_options or {}, stage_two), **kwargs)

    combined = stage_one.clone()
    combined.set_additional_models(STAGES_KEY, [stage_two])
    combined.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, STAGES_KEY, run_stage)
    return combined


class PixArtTwoStage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return host.schema(
            node_id="PixArtTwoStage",
            search_aliases=["experts", "900M", "stage 2", "refiner", "pixart"],
            display_name="PixArt Two-Stage Experts",
            category="PixArt/sampling",
            description="Combines a stage-1 and a stage-2 PixArt MODEL (e.g. the 900M PixArt-Σ expert pair) into one "
                        "MODEL for any sampler: stage 1 denoises the timesteps at or above the switch, stage 2 the "
                        "rest, in one run. KV compression and LoRAs work on both.",
            inputs=[
                io.Model.Input("stage_one", tooltip="The high-noise expert (stage 1), from the PixArt DiT Loader."),
                io.Model.Input("stage_two", tooltip="The low-noise expert (stage 2), from the PixArt DiT Loader."),
                io.Int.Input("switch_timestep", default=PUBLISHED_SWITCH, min=1, max=999,
                             tooltip="Stage 2 runs the timesteps below this (of 1000); the published 900M pair is "
                                     "trained for 400."),
            ],
            outputs=[io.Model.Output(tooltip="One MODEL that runs stage 1 above the switch timestep and stage 2 below it.")],
        )

    @classmethod
    def execute(cls, stage_one, stage_two, switch_timestep):
        return io.NodeOutput(two_stage_model(stage_one, stage_two, switch_timestep))
