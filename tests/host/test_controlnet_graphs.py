"""Host tier: PixArt ControlNets through core ControlNetApplyAdvanced, on a real server (API graphs) and in-process.

The reference is the core tier's controlled forward (bench.fixtures.controlnet.reference_forward: diffusers' modules in
ControlPixArtHalf's order) in the diffusers pipeline's loop (DPM-Solver++ 2M, linspace timesteps, CFG 4.5), the prompt
encoded by PixArtAlphaPipeline.encode_prompt and the hint by diffusers' AutoencoderKL (mean latent times PixArt-α's
scale, as ComfyUI's VAE Encode + the latent format do).
"""
import importlib
import os

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from bench.fixtures.comfy_server import error_message
from bench.fixtures.controlnet import base_original, reference_forward, save_controlnet_files, tiny_controlnet
from bench.fixtures.models_folder import REPO
from bench.fixtures.pack import import_comfy
from bench.fixtures.schedulers import pixart_sigma_scheduler
from host.comfy_host import require_comfyui

COMFYUI = require_comfyui()
import_comfy(COMFYUI)

import comfy.sample  # noqa: E402
import comfy.sampler_helpers  # noqa: E402
import comfy.utils  # noqa: E402

from pixart_sigma_nodes.nodes import model_loading  # noqa: E402
from pixart_sigma_nodes.nodes.controlnet import PixArtControl, load_pixart_controlnet  # noqa: E402

comfy_nodes = importlib.import_module("nodes")  # ComfyUI's core nodes module

PROMPT = "A photo of a CAT riding the moon"
SIZE, STEPS, CFG, SEED = 256, 8, 4.5, 31
ALPHA_SCALE = 0.18215
BASE_NAME, CONTROL_NAME = "alpha-controlnet-base-tiny.safetensors", "PixArt-XL-2-1024-ControlNet-tiny.pth"


def _hint_pixels(height: int, width: int) -> np.ndarray:
    """A deterministic edge-like RGB image (what a HED preprocessor gives: light lines on dark)."""
    yy, xx = np.mgrid[0:height, 0:width]
    lines = ((np.sin(xx / 9.0) * np.cos(yy / 13.0)) > 0.6) | (np.abs(xx - yy) < 3)
    image = np.zeros((height, width, 3), np.uint8)
    image[lines] = (250, 240, 230)
    return image


@pytest.fixture(scope="module")
def control(server):
    net = tiny_controlnet()
    folder = os.path.join(server.base, "models", "controlnet")
    paths = save_controlnet_files(net, folder, name="PixArt-XL-2-1024-ControlNet-tiny")
    save_file(base_original(net), os.path.join(server.base, "models", "diffusion_models", BASE_NAME))
    for name, (height, width) in {"hint.png": (SIZE, SIZE), "hint-wide.png": (192, 320)}.items():
        Image.fromarray(_hint_pixels(height, width)).save(os.path.join(server.base, "input", name))
    return net, paths


def _graph(strength=1.0, start=0.0, end=1.0, hint="hint.png", sampler="kv", kv="off", controlled=True):
    graph = {
        "t5": {"class_type": "PixArtT5Loader", "inputs": {"t5_name": f"diffusers/{REPO}", "dtype": "fp32",
                                                           "device": "default", "caption_length": "alpha_120"}},
        "pos": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["t5", 0], "text": PROMPT}},
        "neg": {"class_type": "PixArtTextEncode", "inputs": {"clip": ["t5", 0], "text": ""}},
        "dit": {"class_type": "PixArtDiTLoader", "inputs": {"dit_name": BASE_NAME, "weight_dtype": "fp32"}},
        "latent": {"class_type": "PixArtEmptyLatent", "inputs": {"width": SIZE, "height": SIZE, "batch_size": 1,
                                                                 "binning": "off", "model": ["dit", 0]}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "vae-tiny.safetensors"}},
        "hint": {"class_type": "LoadImage", "inputs": {"image": hint}},
        "cnet": {"class_type": "PixArtControlNetLoader", "inputs": {"control_net_name": CONTROL_NAME,
                                                                     "weight_dtype": "default"}},
        "apply": {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cnet", 0], "image": ["hint", 0],
            "strength": strength, "start_percent": start, "end_percent": end, "vae": ["vae", 0]}},
    }
    positive, negative = (["apply", 0], ["apply", 1]) if controlled else (["pos", 0], ["neg", 0])
    if sampler == "kv":
        graph["sample"] = {"class_type": "PixArtKVSampler", "inputs": {
            "model": ["dit", 0], "positive": positive, "negative": negative, "latent_image": ["latent", 0],
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "dpmpp_2m", "scheduler": "pixart_reference",
            "denoise": 1.0, "kv_compress": kv, "kv_layers": "", "kv_mode": "avg", "kv_steps": 1.0}}
    elif sampler == "ksampler":
        graph["sample"] = {"class_type": "KSampler", "inputs": {
            "model": ["dit", 0], "positive": positive, "negative": negative, "latent_image": ["latent", 0],
            "seed": SEED, "steps": STEPS, "cfg": CFG, "sampler_name": "dpmpp_2m", "scheduler": "pixart_reference",
            "denoise": 1.0}}
    else:  # SamplerCustomAdvanced
        graph.update({
            "noise": {"class_type": "RandomNoise", "inputs": {"noise_seed": SEED}},
            "guider": {"class_type": "CFGGuider", "inputs": {"model": ["dit", 0], "positive": positive,
                                                             "negative": negative, "cfg": CFG}},
            "select": {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "dpmpp_2m"}},
            "sigmas": {"class_type": "BasicScheduler", "inputs": {"model": ["dit", 0], "scheduler": "pixart_reference",
                                                                  "steps": STEPS, "denoise": 1.0}},
            "sample": {"class_type": "SamplerCustomAdvanced", "inputs": {
                "noise": ["noise", 0], "guider": ["guider", 0], "sampler": ["select", 0], "sigmas": ["sigmas", 0],
                "latent_image": ["latent", 0]}},
        })
    graph["save"] = {"class_type": "SaveLatent", "inputs": {"samples": ["sample", 0], "filename_prefix": "cnet"}}
    return graph


def _latent(server, graph) -> torch.Tensor:
    entry = server.run(graph, timeout=600)
    assert entry["status"]["status_str"] == "success", error_message(entry)
    return server.saved_latent(entry, "save")


def _prompts(server, net):
    from diffusers import PixArtAlphaPipeline

    ref = server.reference
    pipe = PixArtAlphaPipeline(tokenizer=ref["tokenizer"], text_encoder=ref["t5"], vae=ref["vae"],
                               transformer=net.base, scheduler=pixart_sigma_scheduler())
    with torch.no_grad():
        pos, pos_mask, neg, neg_mask = pipe.encode_prompt(PROMPT, negative_prompt="", max_sequence_length=120,
                                                          clean_caption=False)
    return torch.cat([neg, pos]), torch.cat([neg_mask, pos_mask])


def _hint_latent(server, name="hint.png") -> torch.Tensor:
    pixels = torch.from_numpy(np.array(Image.open(os.path.join(server.base, "input", name)).convert("RGB")))
    pixels = pixels.float().div(255).permute(2, 0, 1)[None]  # (1, 3, H, W) in [0, 1]
    with torch.no_grad():
        return server.reference["vae"].encode(pixels * 2 - 1).latent_dist.mode() * ALPHA_SCALE


def _reference(server, net, strength=1.0, active=lambda t: True):
    """The pipeline loop with the controlled reference forward; `active(t)` says at which timesteps control applies.
    -> (latent (1, 4, h, w) in ComfyUI's scale, timesteps where the control ran)"""
    context, mask = _prompts(server, net)
    hint = _hint_latent(server).expand(2, -1, -1, -1)
    scheduler = pixart_sigma_scheduler()
    scheduler.set_timesteps(STEPS)
    side = SIZE // 8
    latents = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(SEED)) * scheduler.init_noise_sigma
    ran = []
    for t in scheduler.timesteps:
        use = active(float(t))
        ran += [int(t)] if use else []
        out = reference_forward(net, torch.cat([latents] * 2), t.expand(2).float(), context, mask,
                                hint if use else None, strength)[:, :4]
        uncond, cond = out.chunk(2)
        latents = scheduler.step(uncond + CFG * (cond - uncond), t, latents).prev_sample
    return latents / ALPHA_SCALE, ran


def _relative(ours, reference) -> float:
    return ((ours - reference).abs().max() / reference.std()).item()


@pytest.mark.parametrize("strength", [1.0, 0.35])
def test_strength_scales_the_controlnet_as_the_reference(server, control, strength):
    """At strengths core passes on (core's apply node returns the conditioning untouched at 0, so that case tests
    nothing of the pack): the copied blocks' residuals scaled as the reference loop scales them."""
    net, _ = control
    plain = _latent(server, _graph(controlled=False))
    ours = _latent(server, _graph(strength=strength))
    reference, ran = _reference(server, net, strength=strength)
    error = _relative(ours, reference)
    print(f"\nControlNet strength {strength} (PixArtKVSampler): latent max error / std = {error:.2e}; differs from no "
          f"ControlNet by {_relative(plain, ours):.2e} (relative to std)")
    assert len(ran) == STEPS
    assert error <= 3e-4
    assert _relative(plain, ours) > 1e-2


def test_start_and_end_percent_limit_the_steps(server, control):
    """Core's percent range (sigma of start/end percent) against the reference applying control only at the timesteps
    inside it: 1000 * (1 - percent) for an epsilon model."""
    net, _ = control
    start, end = 0.2, 0.7
    ours = _latent(server, _graph(start=start, end=end))
    reference, ran = _reference(server, net, active=lambda t: 999 * (1 - end) <= t <= 999 * (1 - start))
    full, _ = _reference(server, net)
    error = _relative(ours, reference)
    print(f"\nControlNet on steps {ran} of {STEPS}: latent max error / std = {error:.2e}")
    assert 0 < len(ran) < STEPS
    assert error <= 3e-4
    assert _relative(ours, full) > 1e-3


def test_every_sampler_path_with_kv_compression(server, control):
    """KSampler and SamplerCustomAdvanced give the reference too; PixArtKVSampler with KV compression on (the deep half
    of the blocks, past the copied ones) differs from it and equals a run of KSampler on PixArtKVCompress's MODEL."""
    net, _ = control
    reference, _ = _reference(server, net)
    for sampler in ("ksampler", "custom"):
        error = _relative(_latent(server, _graph(sampler=sampler)), reference)
        print(f"\nControlNet through {sampler}: latent max error / std = {error:.2e}")
        assert error <= 3e-4
    compressed = _latent(server, _graph(kv="2x2"))
    graph = _graph(sampler="ksampler")
    graph["kv"] = {"class_type": "PixArtKVCompress", "inputs": {"model": ["dit", 0], "kv_compress": "2x2",
                                                                 "kv_layers": "", "kv_mode": "avg", "kv_steps": 1.0}}
    graph["sample"]["inputs"]["model"] = ["kv", 0]
    assert torch.equal(_latent(server, graph), compressed)
    assert _relative(compressed, reference) > 1e-3


def test_a_hint_of_another_size_is_resized_as_core_does(server, control):
    """A 320 x 192 hint for a 256 x 256 latent: core's common_upscale (nearest-exact, center crop) to the latent's
    pixel size, here done beforehand and saved (lossless: nearest-exact keeps the pixel values)."""
    pixels = torch.from_numpy(_hint_pixels(192, 320)).float().div(255)[None].movedim(-1, 1)
    resized = comfy.utils.common_upscale(pixels, SIZE, SIZE, "nearest-exact", "center")
    array = (resized[0].movedim(0, -1).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(array).save(os.path.join(server.base, "input", "hint-resized.png"))
    wide = _latent(server, _graph(hint="hint-wide.png"))
    assert torch.equal(wide, _latent(server, _graph(hint="hint-resized.png")))
    assert not torch.equal(wide, _latent(server, _graph()))


def test_an_sd15_controlnet_file_is_a_node_error(server, control):
    _, paths = control
    graph = _graph()
    graph["cnet"]["inputs"]["control_net_name"] = os.path.basename(paths["sd15"])
    entry = server.run(graph, timeout=600)
    message = error_message(entry)
    assert entry["status"]["status_str"] == "error"
    assert message.startswith("PixArtControlNetLoader")
    assert "control_v11p_sd15_canny-tiny.safetensors is not a PixArt ControlNet" in message
    assert "Stable Diffusion" in message and "Load ControlNet Model" in message


# --- in-process ------------------------------------------------------------------------------------------------------

def _conds(control_net, image, strength=1.0, vae=None):
    generator = torch.Generator().manual_seed(5)
    positive = [[torch.randn(1, 120, 32, generator=generator), {"attention_mask": torch.tensor([[1] * 11 + [0] * 109])}]]
    negative = [[torch.randn(1, 120, 32, generator=generator), {"attention_mask": torch.tensor([[1] + [0] * 119])}]]
    return comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(positive, negative, control_net, image, strength,
                                                                   0.0, 1.0, vae=vae)


@pytest.fixture(scope="module")
def in_process(server, control):
    import comfy.sd

    _, paths = control
    vae = comfy.sd.VAE(sd=load_file(os.path.join(server.base, "models", "vae", "vae-tiny.safetensors")))
    image = torch.from_numpy(_hint_pixels(96, 128)).float().div(255)[None]  # (1, H, W, 3)
    base = os.path.join(server.base, "models", "diffusion_models", BASE_NAME)
    return paths, vae, image, base


def _sample(patcher, positive, negative):
    latent = torch.zeros(1, 4, 12, 16)
    noise = comfy.sample.prepare_noise(latent, SEED)
    return comfy.sample.sample(patcher, noise, 3, CFG, "dpmpp_2m", "normal", positive, negative, latent, denoise=1.0,
                               seed=SEED, disable_pbar=True)


def test_lowvram_partial_load_of_the_controlnet_gives_the_same_result(in_process):
    paths, vae, image, base = in_process
    model = model_loading.load_dit_patcher(base, "fp32")
    full = load_pixart_controlnet(paths["official_pth"], "fp32")
    reference = _sample(model, *_conds(full, image, vae=vae))
    partial = load_pixart_controlnet(paths["official_pth"], "fp32")
    patcher = partial.control_model_wrapped
    patcher.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=patcher.model_size() // 4, load_weights=True)
    streamed = [m for m in patcher.model.modules() if getattr(m, "comfy_cast_weights", False)]
    assert streamed, "lowvram loading should leave some ControlNet layers to be cast on the fly"
    assert torch.equal(_sample(model, *_conds(partial, image, vae=vae)), reference)
    patcher.unpatch_model()


def test_the_controlnet_is_loaded_with_the_model_and_counted(in_process):
    paths, vae, image, base = in_process
    control_net = load_pixart_controlnet(paths["adapter"], "fp32")
    assert isinstance(control_net, PixArtControl)
    positive, negative = _conds(control_net, image, vae=vae)
    conds = {"positive": comfy.sampler_helpers.convert_cond(positive),
             "negative": comfy.sampler_helpers.convert_cond(negative)}  # as prepare_sampling passes them
    models, memory = comfy.sampler_helpers.get_additional_models(conds, torch.float32)
    applied = positive[0][1]["control"]
    assert applied.control_model_wrapped in models  # ComfyUI loads/offloads it with the base model
    hidden, depth = applied.control_model.config.hidden_size, applied.control_model.config.depth
    tokens = (96 // 16) * (128 // 16)
    assert memory == (3 * 2 * tokens * hidden + depth * 2 * 2 * 300 * hidden) * 4
    assert applied.control_model_wrapped.model_size() > 0


def test_applied_to_a_model_that_is_not_pixart_is_an_error_naming_both(in_process):
    """ComfyUI's own PixArt-α model (comfy.ldm.pixart, built tiny from its supported-model config) is not our DiT."""
    paths, vae, image, _ = in_process
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.PixArtAlpha({"image_model": "pixart_alpha", "hidden_size": 144, "depth": 2,
                                                 "num_heads": 2, "caption_channels": 32, "input_size": 16})
    config.set_inference_dtype(torch.float32, None)
    native = comfy.model_patcher.ModelPatcher(config.get_model({}), torch.device("cpu"), torch.device("cpu"))
    control_net = load_pixart_controlnet(paths["official_pth"], "fp32")
    positive, negative = _conds(control_net, image, vae=vae)
    with pytest.raises(ValueError, match=r"PixArt ControlNet PixArt-XL-2-1024-ControlNet-tiny\.pth was applied to a "
                                         r"PixArt model \(PixArtMS\), not a PixArt DiT.*PixArt DiT Loader"):
        _sample(native, positive, negative)


def test_a_controlnet_without_a_vae_asks_for_one(in_process):
    paths, _, image, base = in_process
    model = model_loading.load_dit_patcher(base, "fp32")
    positive, negative = _conds(load_pixart_controlnet(paths["official_pth"], "fp32"), image, vae=None)
    with pytest.raises(ValueError, match="needs a VAE"):
        _sample(model, positive, negative)
