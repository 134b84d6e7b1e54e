"""A recipe picked on the sampler node (pixart.recipes) -> the steps, cfg, sampler and scheduler it runs."""
from __future__ import annotations

import logging

from ..pixart.recipes import CUSTOM, RECIPE_CHOICES, RECIPES
from .dit_model import pixart_dit

log = logging.getLogger(__name__)
_warned: set[tuple[str, str]] = set()  # (recipe, model) pairs whose mismatch was logged


def recipe_settings(model, recipe: str, steps: int, cfg: float, sampler_name: str, scheduler: str):
    """(steps, cfg, sampler, scheduler): the node's own for 'custom', else the recipe's; a recipe published for other
    checkpoints runs, with one warning in the log per recipe and model."""
    if recipe == CUSTOM:
        return steps, cfg, sampler_name, scheduler
    chosen = RECIPES.get(recipe)
    if chosen is None:
        raise ValueError(f"recipe '{recipe}' is unknown; choose one of: {', '.join(RECIPE_CHOICES)}.")
    config = pixart_dit(model, "a recipe is for a PixArt checkpoint").config
    mismatch = chosen.mismatch(config)
    if mismatch and (recipe, config.describe()) not in _warned:
        _warned.add((recipe, config.describe()))
        published = "PixArt-" + {"alpha": "α", "sigma": "Σ"}.get(chosen.family, "") + (
            f" {chosen.trained_resolution}" if chosen.trained_resolution else "")
        log.warning("PixArt recipe '%s' is published for %s checkpoints; this model differs (%s: %s). It runs, but "
                    "the result is not what the recipe was made for.", recipe, published, mismatch, config.describe())
    return chosen.steps, chosen.cfg, chosen.sampler, chosen.scheduler
