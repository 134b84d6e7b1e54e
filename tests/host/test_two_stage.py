"""Host tier: two-stage expert pairs in one sampling run, against a diffusers-style loop that calls stage 1 above the
switch timestep and stage 2 below it on the same DPM-Solver++ 2M schedule."""
import pytest
import torch
from safetensors.torch import save_file

from bench.fixtures.models import original_layout, tiny_transformer
from bench.fixtures.pack import import_comfy
from bench.fixtures.schedulers import pixart_sigma_scheduler
from host.comfy_host import require_comfyui

COMFYUI = require_comfyui()
import_comfy(COMFYUI)

import comfy.sample  # noqa: E402

from pixart_sigma_nodes.nodes import dit_model, model_loading  # noqa: E402
from pixart_sigma_nodes.nodes.kv_compress_node import apply_kv  # noqa: E402
from pixart_sigma_nodes.nodes.two_stage import two_stage_model  # noqa: E402

STEPS, CFG, SEED, SWITCH = 8, 4.5, 3, 400
SCALE = 0.13025  # SDXL latent scale: ComfyUI returns latents divided by it


@pytest.fixture(scope="module")
def stages(sigma_ckpt, tmp_path_factory):
    """Stage 1: the session's tiny Σ model; stage 2: another tiny Σ model with other random weights."""
    model, null_caption = tiny_transformer("sigma", False, seed=33)
    path = str(tmp_path_factory.mktemp("stage_two") / "stage-two.safetensors")
    save_file(original_layout(model, null_caption), path)
    return {"one": (sigma_ckpt.model, sigma_ckpt.paths["original_safetensors"]), "two": (model, path)}


def _conds():
    generator = torch.Generator().manual_seed(8)
    masks = []
    for real in (9, 1):
        mask = torch.zeros(1, 300)
        mask[0, :real] = 1
        masks.append(mask)
    contexts = [torch.randn(1, 300, 32, generator=generator) for _ in range(2)]
    return contexts, masks


def _comfy(patcher) -> torch.Tensor:
    (pos, neg), (pos_mask, neg_mask) = _conds()
    latent = torch.zeros(1, 4, 12, 16)
    noise = comfy.sample.prepare_noise(latent, SEED)
    out = comfy.sample.sample(patcher, noise, STEPS, CFG, "dpmpp_2m", "pixart_reference",
                              [[pos, {"attention_mask": pos_mask}]], [[neg, {"attention_mask": neg_mask}]], latent,
                              denoise=1.0, seed=SEED, disable_pbar=True)
    return out * SCALE


def _reference(stage_one, stage_two) -> tuple[torch.Tensor, list[str]]:
    """The diffusers pipeline's loop (DPM-Solver++ 2M, linspace timesteps, CFG) calling stage 1 at t >= SWITCH and
    stage 2 below; returns the latent and which stage ran each step."""
    scheduler = pixart_sigma_scheduler()
    scheduler.set_timesteps(STEPS)
    (pos, neg), (pos_mask, neg_mask) = _conds()
    latents = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(SEED)) * scheduler.init_noise_sigma
    ran = []
    for t in scheduler.timesteps:
        model = stage_one if t >= SWITCH else stage_two
        ran.append("one" if model is stage_one else "two")
        with torch.no_grad():
            out = model(torch.cat([latents] * 2), encoder_hidden_states=torch.cat([neg, pos]),
                        encoder_attention_mask=torch.cat([neg_mask, pos_mask]), timestep=t.expand(2),
                        return_dict=False)[0][:, :4]
        uncond, cond = out.chunk(2)
        latents = scheduler.step(uncond + CFG * (cond - uncond), t, latents).prev_sample
    return latents, ran


def test_two_stages_equal_the_reference_loop(stages):
    one = model_loading.load_dit_patcher(stages["one"][1], "fp32")
    two = model_loading.load_dit_patcher(stages["two"][1], "fp32")
    ours = _comfy(two_stage_model(one, two, SWITCH))
    reference, ran = _reference(stages["one"][0], stages["two"][0])
    print(f"\nstages per step: {' '.join(ran)}")
    assert "one" in ran and "two" in ran
    error = ((ours - reference).abs().max() / reference.abs().max()).item()
    print(f"two-stage run vs the reference loop: max abs / max {error:.1e}")
    assert error <= 1e-5
    single = ((_comfy(one) - reference).abs().max() / reference.abs().max()).item()
    assert single > 1e-3  # stage 1 alone is a different picture: the switch is what the match shows


def test_kv_compression_and_caption_cache_in_both_stages(stages, monkeypatch):
    """A KV setting on the combined MODEL reaches both DiTs; each DiT encodes its captions once for its steps."""
    one = model_loading.load_dit_patcher(stages["one"][1], "fp32")
    two = model_loading.load_dit_patcher(stages["two"][1], "fp32")
    calls = {"one": 0, "two": 0}
    seen_kv = {"one": 0, "two": 0}
    for name, patcher in (("one", one), ("two", two)):
        dit = patcher.model.diffusion_model
        encode, forward = dit.encode_caption, type(dit).forward

        def counted(*args, _name=name, _encode=encode, **kwargs):
            calls[_name] += 1
            return _encode(*args, **kwargs)

        def recorded(self, *args, _name=name, _forward=forward, **kwargs):
            if dit_model.KV_COMPRESS_OPTION in (kwargs.get("transformer_options") or {}):
                seen_kv[_name] += 1
            return _forward(self, *args, **kwargs)

        monkeypatch.setattr(dit, "encode_caption", counted)
        monkeypatch.setattr(dit, "forward", recorded.__get__(dit))
    combined = apply_kv(two_stage_model(one, two, SWITCH), "2x2", "all", "avg", 1.0)
    compressed = _comfy(combined)
    assert calls == {"one": 1, "two": 1}  # cond and uncond batched: one caption batch per DiT, once per run
    assert seen_kv["one"] > 0 and seen_kv["two"] > 0
    plain = _comfy(two_stage_model(one, two, SWITCH))
    assert (compressed - plain).abs().max() > 1e-4


def test_stages_of_different_families_are_refused(stages, alpha_ckpt):
    one = model_loading.load_dit_patcher(stages["one"][1], "fp32")
    alpha = model_loading.load_dit_patcher(alpha_ckpt.paths["original_safetensors"], "fp32")
    with pytest.raises(ValueError, match="do not fit together.*family"):
        two_stage_model(one, alpha, SWITCH)


def test_a_lora_on_each_stage_equals_the_loop_with_both_merged(stages, tmp_path):
    """A different LoRA on each stage through core's LoraLoaderModelOnly, before combining them: each stage runs with
    its own LoRA, as the reference loop does with each PEFT adapter merged into its stage's weights."""
    import importlib

    import folder_paths

    from lora_fixtures import ATTN_FF_TARGETS, merged, peft_lora

    folder_paths.add_model_folder_path("loras", str(tmp_path))
    adapted, names = {}, {}
    for seed, stage in ((11, "one"), (12, "two")):
        adapted[stage], state = peft_lora(stages[stage][0], ATTN_FF_TARGETS, seed=seed)
        names[stage] = f"stage-{stage}-{seed}.safetensors"
        save_file({f"transformer.{k}": v for k, v in state.items()}, str(tmp_path / names[stage]))
    loader = importlib.import_module("nodes").LoraLoaderModelOnly()
    patched = {stage: loader.load_lora_model_only(model_loading.load_dit_patcher(stages[stage][1], "fp32"),
                                                   names[stage], 1.0)[0] for stage in ("one", "two")}
    ours = _comfy(two_stage_model(patched["one"], patched["two"], SWITCH))
    reference, _ = _reference(merged(adapted["one"], 1.0), merged(adapted["two"], 1.0))
    without, _ = _reference(stages["one"][0], stages["two"][0])
    error = ((ours - reference).abs().max() / reference.abs().max()).item()
    print(f"\ntwo-stage run with a LoRA on each stage vs the loop with both merged: max abs / max {error:.1e}")
    assert error <= 1e-5
    assert ((ours - without).abs().max() / without.abs().max()).item() > 1e-3
