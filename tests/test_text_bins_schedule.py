"""Caption tokenization, resolution bins and the noise schedule against the diffusers reference."""
import pytest
import torch

from pixart.bins import ASPECT_RATIO_BINS, bins_for_resolution, nearest_bin, resize_and_crop
from pixart.schedule import alphas_cumprod, reference_sigmas, reference_timesteps
from pixart.text import preprocess_caption, tokenize_caption

PROMPTS = ["A photo of a CAT riding the moon", "", "  red   dog  ", "an oil painting of a city at night " * 40,
           "astronaut riding a horse in space"]


@pytest.mark.parametrize("max_length", [120, 300, 8])
@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_tokenization_matches_the_pipeline_rules(tiny_tokenizer, prompt, max_length):
    tokenizer, backend, _ = tiny_tokenizer
    expected = tokenizer(preprocess_caption(prompt), padding="max_length", max_length=max_length,
                         truncation=True, add_special_tokens=True)
    ours = tokenize_caption(prompt, lambda s: backend.encode(s, add_special_tokens=False).ids,
                            eos_id=1, pad_id=0, max_length=max_length)
    assert ours.ids == expected["input_ids"]
    assert ours.mask == expected["attention_mask"]
    assert ours.length == sum(expected["attention_mask"])


def test_empty_prompt_is_eos_only(tiny_tokenizer):
    _, backend, _ = tiny_tokenizer
    ours = tokenize_caption("", lambda s: backend.encode(s, add_special_tokens=False).ids, 1, 0, 300)
    assert ours.ids[:2] == [1, 0] and ours.mask == [1] + [0] * 299 and ours.dropped == 0


def test_truncation_is_reported(tiny_tokenizer, caplog):
    _, backend, _ = tiny_tokenizer
    encode = lambda s: backend.encode(s, add_special_tokens=False).ids  # noqa: E731
    long_prompt = "a big red dog " * 100
    with caplog.at_level("WARNING"):
        ours = tokenize_caption(long_prompt, encode, 1, 0, 120)
    assert ours.dropped == len(encode(preprocess_caption(long_prompt))) - 119
    assert ours.ids[-1] == 1 and ours.length == 120
    assert "over PixArt's 120-token limit" in caplog.text


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


def _reference_scheduler():
    from diffusers import DPMSolverMultistepScheduler

    return DPMSolverMultistepScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                       num_train_timesteps=1000, algorithm_type="dpmsolver++", solver_order=2,
                                       timestep_spacing="linspace", final_sigmas_type="zero")


def test_reference_timesteps_equal_the_pipeline_scheduler():
    scheduler = _reference_scheduler()
    for steps in list(range(1, 60)) + [100, 200, 999]:
        scheduler.set_timesteps(steps)
        assert reference_timesteps(steps) == scheduler.timesteps.tolist(), steps
        # diffusers derives sigmas from float32 betas; 1 - alpha_cumprod near t=0 loses ~1e-4 relative there.
        assert torch.allclose(reference_sigmas(steps).float(), scheduler.sigmas.float(), rtol=2e-4), steps


def test_alphas_cumprod_equal_the_scheduler():
    scheduler = _reference_scheduler()
    assert torch.allclose(alphas_cumprod().float(), scheduler.alphas_cumprod, rtol=1e-5)
    assert reference_timesteps(20)[0] == 999 and reference_sigmas(20)[-1] == 0
