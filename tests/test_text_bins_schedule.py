"""Resolution bins and the noise schedule against the diffusers reference."""
import numpy as np
import pytest
import torch

from bench.fixtures.schedulers import alphas_cumprod, official_lcm_scheduler, pixart_sigma_scheduler, reference_sigmas
from pixart_sigma_nodes.pixart.bins import ASPECT_RATIO_BINS, bins_for_resolution, nearest_bin, resize_and_crop
from pixart_sigma_nodes.pixart.schedule import reference_timesteps


def test_bin_tables_equal_diffusers():
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_alpha import (
        ASPECT_RATIO_256_BIN,
        ASPECT_RATIO_512_BIN,
        ASPECT_RATIO_1024_BIN,
    )
    from diffusers.pipelines.pixart_alpha.pipeline_pixart_sigma import ASPECT_RATIO_2048_BIN

    for size, table in ((256, ASPECT_RATIO_256_BIN), (512, ASPECT_RATIO_512_BIN), (1024, ASPECT_RATIO_1024_BIN),
                        (2048, ASPECT_RATIO_2048_BIN)):
        ours = ASPECT_RATIO_BINS[size]
        assert list(ours) == list(table)
        assert all(ours[k] == (int(h), int(w)) for k, (h, w) in table.items())
    assert bins_for_resolution(1024) is ASPECT_RATIO_BINS[1024]
    assert bins_for_resolution(2048) is ASPECT_RATIO_BINS[2048]


def test_nearest_bin_equals_diffusers():
    from diffusers.image_processor import PixArtImageProcessor

    for resolution in (256, 512, 1024, 2048):
        table = ASPECT_RATIO_BINS[resolution]
        reference = {k: list(v) for k, v in table.items()}
        for height in range(256, 4097, 112):
            for width in range(256, 4097, 176):
                assert nearest_bin(height, width, table) == \
                    PixArtImageProcessor.classify_height_width_bin(height, width, reference)


@pytest.mark.parametrize("target", [(1000, 1000), (720, 1280), (1280, 720), (333, 999)])
def test_resize_and_crop_equals_diffusers(target):
    from diffusers.image_processor import PixArtImageProcessor

    images = torch.rand(2, 3, 768, 1344)
    ours = resize_and_crop(images, *target)
    ref = PixArtImageProcessor.resize_and_crop_tensor(images, target[1], target[0])
    assert ours.shape == (2, 3, *target) and torch.equal(ours, ref)


def test_reference_timesteps_equal_the_pipeline_scheduler():
    scheduler = pixart_sigma_scheduler()
    for steps in list(range(1, 60)) + [100, 200, 999]:
        scheduler.set_timesteps(steps)
        assert reference_timesteps(steps) == scheduler.timesteps.tolist(), steps
        # diffusers derives sigmas from float32 betas; 1 - alpha_cumprod near t=0 loses ~1e-4 relative there.
        assert torch.allclose(reference_sigmas(steps).float(), scheduler.sigmas.float(), rtol=2e-4), steps


def test_alphas_cumprod_equal_the_scheduler():
    scheduler = pixart_sigma_scheduler()
    assert torch.allclose(alphas_cumprod().float(), scheduler.alphas_cumprod, rtol=1e-5)
    assert reference_timesteps(20)[0] == 999 and reference_sigmas(20)[-1] == 0


def test_resize_back_follows_the_latent():
    from pixart_sigma_nodes.pixart.bins import resize_back_size

    requested, binned = (120, 200), (192, 320)
    assert resize_back_size(requested, binned, binned) == requested
    assert resize_back_size(requested, binned, (384, 640)) == (240, 400)  # upscaled by 2 for a hires-fix pass
    assert resize_back_size(requested, binned, (288, 480)) == (180, 300)  # by 1.5
    assert resize_back_size(requested, binned, (248, 416)) == (156, 260)  # by 1.3: 31.2 latent rows rounded to 31
    assert resize_back_size(requested, binned, (240, 400), size_set_since=True) is None  # a stated size is kept
    assert resize_back_size(requested, binned, (96, 160), size_set_since=True) is None  # a crop
    assert resize_back_size(requested, binned, (192, 400)) is None  # changed shape: kept as decoded


def test_lcm_diffusers_rule_equals_diffusers_lcm_scheduler():
    from diffusers import LCMScheduler

    from pixart_sigma_nodes.pixart.schedule import lcm_timesteps

    scheduler = LCMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear")  # PixArt-LCM's config
    for steps in range(1, 51):
        scheduler.set_timesteps(steps)
        assert lcm_timesteps(steps, rule="diffusers") == scheduler.timesteps.tolist(), steps
    with pytest.raises(ValueError, match="between 1 and 50"):
        lcm_timesteps(51)


def _authors_lcm_timesteps(steps: int, origin_steps: int = 50, train_steps: int = 1000) -> list[int]:
    """The PixArt-α authors' LCMScheduler.set_timesteps(steps, origin_steps) (PixArt-alpha diffusion/lcm_scheduler.py),
    written out from its description: the training grid range(1, origin + 1) * (T // origin) - 1, read backwards every
    len(grid) // steps, the first `steps` of it."""
    grid = np.arange(1, origin_steps + 1) * (train_steps // origin_steps) - 1
    return grid[:: -(len(grid) // steps)][:steps].tolist()


def test_lcm_official_rule_equals_the_authors_scheduler():
    from pixart_sigma_nodes.pixart.schedule import lcm_timesteps

    assert lcm_timesteps(4) == [999, 759, 519, 279]  # the recipe's 4 steps (diffusers today: 999, 759, 499, 259)
    for steps in range(1, 51):
        assert lcm_timesteps(steps) == _authors_lcm_timesteps(steps), steps
    official = official_lcm_scheduler()
    if official is not None:  # the authors' class itself, when PIXART_ALPHA_REPO names a checkout
        for steps in range(1, 51):
            official.set_timesteps(steps, 50)
            assert lcm_timesteps(steps) == official.timesteps.tolist(), steps


def test_recipes_name_the_checkpoints_they_fit():
    from bench.fixtures.models import sigma_width_config
    from pixart_sigma_nodes.pixart.config import ALPHA
    from pixart_sigma_nodes.pixart.recipes import RECIPES

    sigma_1024 = sigma_width_config(depth=28)
    alpha_512 = sigma_width_config(depth=28, family=ALPHA, caption_tokens=120, sample_size=64)
    assert RECIPES["alpha_dmd_512"].mismatch(alpha_512) is None
    assert RECIPES["alpha_dmd_512"].mismatch(sigma_1024) == "family sigma, trained size 1024 px"
    assert RECIPES["sigma_sa_solver"].mismatch(sigma_1024) is None
    assert RECIPES["sigma_dpm_solver"].mismatch(alpha_512) is None  # the default fits every checkpoint
