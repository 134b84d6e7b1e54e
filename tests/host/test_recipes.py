"""Host tier: each published checkpoint's sampling recipe, picked by name in an API-mode graph on a real server,
against diffusers' pipeline with that checkpoint's scheduler and settings (tiny random weights, fp32): PixArt-α DMD,
PixArt-α LCM and PixArt-Σ SA-Solver; the same samplers through core KSampler; bad input."""
import copy
import os

import pytest
import torch
from safetensors.torch import save_file

from bench.fixtures.comfy_server import error_message
from bench.fixtures.models import original_layout, tiny_transformer
from bench.fixtures.reference_runs import (
    PROMPT,
    SIZE,
    compare,
    compare_outputs,
    graph_outputs,
    reference_pipeline,
    text_to_image,
)
from bench.fixtures.schedulers import official_lcm_scheduler, pixart_sigma_scheduler
from host.comfy_host import require_comfyui

require_comfyui()


@pytest.fixture(scope="module")
def dmd_model(server):
    """A tiny PixArt-α 512 transformer (sample size 64, no micro-conditions), as the DMD checkpoint is shaped."""
    model, null_caption = tiny_transformer("alpha", False, seed=40, sample_size=64)
    save_file(original_layout(model, null_caption), os.path.join(server.base, "models", "diffusion_models",
                                                                  "alpha512-dmd-tiny.safetensors"))
    return model


def _graph(dit_name, caption_length, recipe, seed, negative=True):
    return text_to_image(dit_name, caption_length, seed, recipe, negative=negative, recipe=recipe)


def _pipeline(server, family, transformer, scheduler):
    from diffusers import PixArtAlphaPipeline, PixArtSigmaPipeline

    pipeline = PixArtSigmaPipeline if family == "sigma" else PixArtAlphaPipeline
    return reference_pipeline(server, pipeline, family, transformer, scheduler)


def test_dmd_recipe_equals_the_dmd_app(server, dmd_model):
    """PixArt-sigma's app_pixart_dmd.py: DDPMScheduler (the DMD repo's config: linear betas, epsilon, no clipping),
    timesteps=[400], guidance 1, 120 tokens; the pipeline returns the predicted x0 of pure unit noise at t=400."""
    from diffusers import DDPMScheduler

    seed = 21
    ours = graph_outputs(server, _graph("alpha512-dmd-tiny.safetensors", "alpha_120", "alpha_dmd_512", seed, negative=False))
    scheduler = DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", clip_sample=False)
    pipe = _pipeline(server, "alpha", dmd_model, scheduler)
    compare("DMD", "alpha", ours, pipe, seed, timesteps=[400], guidance_scale=1.0, num_inference_steps=1,
             max_sequence_length=120)


AUTHORS_LCM_4_STEPS = [999, 759, 519, 279]  # PixArt-alpha diffusion/lcm_scheduler.py set_timesteps(4, 50)


def _lcm_scheduler():
    from diffusers import LCMScheduler

    return LCMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear", prediction_type="epsilon")


def test_lcm_recipe_equals_the_authors_lcm_loop(server, alpha_ckpt):
    """PixArt-LCM-XL-2-1024-MS as its authors run it (PixArt-alpha scripts/inference_lcm.py): their LCMScheduler's
    set_timesteps(4, 50) picks every 12th of the 50 distilled timesteps, [999, 759, 519, 279]; their step is the LCM
    boundary condition (c_skip, c_out with t / 0.1) and fresh noise to the next timestep, the result the last step's
    denoised sample: what diffusers' LCMScheduler computes given those timesteps, so the reference is diffusers'
    pipeline with them, its noise from the pipeline's generator; guidance 0, micro-conditions from the size."""
    seed = 22
    ours = graph_outputs(server, _graph("alpha-tiny.safetensors", "alpha_120", "alpha_lcm_1024", seed, negative=False))
    pipe = _pipeline(server, "alpha", alpha_ckpt.model, _lcm_scheduler())
    compare("LCM (the authors' timesteps)", "alpha", ours, pipe, seed, guidance_scale=0.0,
            timesteps=AUTHORS_LCM_4_STEPS, max_sequence_length=120)


def test_lcm_recipe_equals_the_authors_scheduler_itself(server, alpha_ckpt, monkeypatch):
    """The authors' own loop (PixArt-alpha scripts/inference_lcm.py with their diffusion/lcm_scheduler.py, loaded from
    PIXART_ALPHA_REPO): set_timesteps(4, 50); per timestep the DiT's epsilon half, then step(pred, i, t, x), whose
    fresh noise (their bare torch.randn) is drawn from the pipeline's generator stream, as the recipe draws it; the
    result is the last step's denoised latent. Prompt embedding, micro-conditions and VAE decode as the pipeline."""
    official = official_lcm_scheduler()
    if official is None:
        pytest.skip("the authors' LCM loop needs PIXART_ALPHA_REPO: a checkout of github.com/PixArt-alpha/PixArt-alpha")
    seed = 23
    ours = graph_outputs(server, _graph("alpha-tiny.safetensors", "alpha_120", "alpha_lcm_1024", seed, negative=False))
    pipe = _pipeline(server, "alpha", alpha_ckpt.model, _lcm_scheduler())
    official.set_timesteps(4, 50)
    assert official.timesteps.tolist() == AUTHORS_LCM_4_STEPS
    generator = torch.Generator("cpu").manual_seed(seed)
    seeded_randn = torch.randn
    with torch.no_grad():
        embeds, mask, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, device="cpu",
                                                clean_caption=False, max_sequence_length=120)
        latents = seeded_randn((1, 4, SIZE // 8, SIZE // 8), generator=generator)  # (B, 4, h, w), the initial noise
        micro = {"resolution": torch.tensor([[SIZE, SIZE]], dtype=torch.float32),
                 "aspect_ratio": torch.tensor([[1.0]])} if alpha_ckpt.model.config.sample_size == 128 else \
            {"resolution": None, "aspect_ratio": None}
        monkeypatch.setattr(torch, "randn", lambda shape, **kw: seeded_randn(shape, generator=generator, **kw))
        for i, t in enumerate(official.timesteps):
            prediction = pipe.transformer(latents, encoder_hidden_states=embeds, encoder_attention_mask=mask,
                                          timestep=torch.full((1,), int(t), dtype=torch.long),
                                          added_cond_kwargs=micro).sample[:, :4]  # (B, 4, h, w) epsilon
            latents, denoised = official.step(prediction, i, t, latents, return_dict=False)
        monkeypatch.undo()
        image = pipe.vae.decode(denoised / pipe.vae.config.scaling_factor).sample  # (B, 3, H, W) in [-1, 1]
        image = pipe.image_processor.postprocess(image, output_type="pt")
    compare_outputs("LCM (the authors' scheduler and loop)", "alpha", ours, denoised, image)


def test_lcm_diffusers_scheduler_equals_diffusers_lcm(server, alpha_ckpt):
    """The pixart_lcm_diffusers scheduler (today's diffusers LCMScheduler: 999, 759, 499, 259) in core KSampler, for
    users matching diffusers."""
    seed = 25
    graph = _graph("alpha-tiny.safetensors", "alpha_120", "custom", seed, negative=False)
    graph["neg"]["inputs"]["text"] = ""
    graph["sample"] = {"class_type": "KSampler", "inputs": {
        "model": ["dit", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": seed, "steps": 4, "cfg": 1.0, "sampler_name": "pixart_lcm", "scheduler": "pixart_lcm_diffusers",
        "denoise": 1.0}}
    pipe = _pipeline(server, "alpha", alpha_ckpt.model, _lcm_scheduler())
    compare("LCM (diffusers' timesteps) in KSampler", "alpha", graph_outputs(server, graph), pipe, seed,
            guidance_scale=0.0, num_inference_steps=4, max_sequence_length=120)


def _sa_solver_pipeline(server, sigma_ckpt):
    from diffusers import SASolverScheduler

    scheduler = SASolverScheduler.from_config(pixart_sigma_scheduler().config, algorithm_type="data_prediction",
                                              predictor_order=2, corrector_order=2,
                                              tau_func=lambda t: 1 if 200 <= t <= 800 else 0)
    return _pipeline(server, "sigma", sigma_ckpt.model, scheduler)


def test_sa_solver_recipe_equals_the_sigma_app(server, sigma_ckpt):
    """PixArt-sigma's app_pixart_sigma.py: SASolverScheduler in data prediction, predictor/corrector order 2, tau 1 for
    t in [200, 800], 25 steps, cfg 3 (empty negative prompt)."""
    seed = 23
    ours = graph_outputs(server, _graph("sigma-tiny.safetensors", "sigma_300", "sigma_sa_solver", seed))
    compare("SA-Solver", "sigma", ours, _sa_solver_pipeline(server, sigma_ckpt), seed, negative_prompt="",
             guidance_scale=3.0, num_inference_steps=25, max_sequence_length=300)


def test_sa_solver_through_core_ksampler(server, sigma_ckpt):
    """The same sampler and scheduler picked by name in core KSampler."""
    seed = 24
    graph = _graph("sigma-tiny.safetensors", "sigma_300", "custom", seed)
    graph["sample"] = {"class_type": "KSampler", "inputs": {
        "model": ["dit", 0], "positive": ["pos", 0], "negative": ["neg", 0], "latent_image": ["latent", 0],
        "seed": seed, "steps": 25, "cfg": 3.0, "sampler_name": "pixart_sa_solver", "scheduler": "pixart_sa_solver",
        "denoise": 1.0}}
    compare("SA-Solver in KSampler", "sigma", graph_outputs(server, graph), _sa_solver_pipeline(server, sigma_ckpt), seed,
             negative_prompt="", guidance_scale=3.0, num_inference_steps=25, max_sequence_length=300)


def test_recipe_on_another_checkpoint_warns_once(server):
    before = server.log().count("recipe 'alpha_dmd_512'")
    for seed in (1, 2):
        graph = _graph("sigma-tiny.safetensors", "sigma_300", "alpha_dmd_512", seed)
        for key in ("vae", "decode", "save"):
            graph.pop(key)
        entry = server.run(graph)
        assert entry["status"]["status_str"] == "success", error_message(entry)
    log = server.log()
    assert log.count("recipe 'alpha_dmd_512'") - before == 1, log[-3000:]
    assert "published for PixArt-α 512" in log and "family sigma" in log


def test_unknown_recipe_is_a_node_error_naming_the_choices(server):
    """A saved workflow naming a recipe this version lacks: v0.33 refuses it at /prompt (combo validation); 0.3.64
    does not validate an optional combo, so the node itself refuses it when it runs. Either way the user reads the
    input, the value and the choices."""
    graph = copy.deepcopy(_graph("sigma-tiny.safetensors", "sigma_300", "turbo", 1))
    status, body = server.post("/prompt", {"prompt": graph})
    if status == 200:
        entry = server.wait(body["prompt_id"])
        assert entry["status"]["status_str"] == "error", entry["status"]
        text = error_message(entry)
        assert text.startswith("PixArtKVSampler:"), text
    else:
        assert status == 400, body
        text = str(body)
    assert "recipe" in text and "turbo" in text and "alpha_lcm_1024" in text and "sigma_sa_solver" in text
