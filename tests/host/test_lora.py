"""Host tier: PixArt LoRAs through ComfyUI's own LoraLoaderModelOnly, against PEFT-merged diffusers weights."""
import copy
import importlib
import logging

import pytest
import torch
from safetensors.torch import save_file

from bench.fixtures.pack import import_comfy
from host.comfy_host import require_comfyui
from lora_fixtures import ATTN_FF_TARGETS, merged, onetrainer_layout, peft_lora

COMFYUI = require_comfyui()
import_comfy(COMFYUI)

import comfy.model_management  # noqa: E402
import folder_paths  # noqa: E402

from pixart_sigma_nodes.nodes import model_loading  # noqa: E402
from pixart_sigma_nodes.nodes.lora import PixArtLoraLoader  # noqa: E402

comfy_nodes = importlib.import_module("nodes")  # ComfyUI's core nodes module
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def loras(tmp_path_factory, sigma_ckpt):
    folder = tmp_path_factory.mktemp("loras")
    folder_paths.add_model_folder_path("loras", str(folder))
    first, first_state = peft_lora(sigma_ckpt.model, ATTN_FF_TARGETS, seed=1)
    second, second_state = peft_lora(sigma_ckpt.model, ["to_q", "to_v", "ff.net.2", "linear_1", "linear"], seed=2)
    save_file({f"transformer.{k}": v for k, v in first_state.items()}, str(folder / "first-diffusers.safetensors"))
    save_file({f"base_model.model.{k}": v for k, v in second_state.items()}, str(folder / "second-peft.safetensors"))
    save_file(onetrainer_layout(first_state, 4), str(folder / "first-onetrainer.safetensors"))
    save_file({**{f"transformer.{k}": v for k, v in first_state.items()},
               "transformer.no_such_block.to_q.lora_A.weight": torch.zeros(4, 144),
               "transformer.no_such_block.to_q.lora_B.weight": torch.zeros(144, 4)},
              str(folder / "with-unknown.safetensors"))
    return {"first": (first, first_state), "second": (second, second_state)}


def _inputs():
    generator = torch.Generator().manual_seed(4)
    mask = torch.zeros(1, 300)
    mask[0, :11] = 1
    return (torch.randn(1, 4, 12, 16, generator=generator), torch.tensor([600.0]),
            torch.randn(1, 300, 32, generator=generator), mask)


def _comfy_output(patcher):
    comfy.model_management.load_models_gpu([patcher])
    x, t, context, mask = _inputs()
    with torch.no_grad():
        return patcher.model.diffusion_model(x, t, context, attention_mask=mask).clone()


def _reference_output(model):
    x, t, context, mask = _inputs()
    with torch.no_grad():
        return model(x, encoder_hidden_states=context, timestep=t, encoder_attention_mask=mask,
                     return_dict=False)[0][:, :4]


def _with_lora(model, name, strength, loader="core"):
    """Core's LoraLoaderModelOnly, or the pack's PixArt LoRA Loader (every layout)."""
    if loader == "core":
        return comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, name, strength)[0]
    return PixArtLoraLoader.execute(model, name, strength).args[0]


@pytest.fixture(scope="module")
def base(sigma_ckpt):
    return model_loading.load_dit_patcher(sigma_ckpt.paths["original_safetensors"], "fp32")


@pytest.mark.parametrize("strength", [1.0, 0.5])
@pytest.mark.parametrize("layout, loader", [("first-diffusers.safetensors", "core"),
                                            ("first-diffusers.safetensors", "pixart"),
                                            ("first-onetrainer.safetensors", "pixart")])
def test_lora_matches_peft_merge(base, loras, layout, loader, strength):
    """Core's loader reads diffusers/PEFT names through core's PixArt key map (the DiT is a PixArt model to the host);
    the PixArt LoRA Loader reads every layout."""
    ours = _comfy_output(_with_lora(base, layout, strength, loader))
    reference = _reference_output(merged(loras["first"][0], strength))
    assert (ours - reference).abs().max().item() <= TOLERANCE


def test_strength_zero_and_original_model_unchanged(base, loras, sigma_ckpt):
    plain = _reference_output(sigma_ckpt.model)
    assert (_comfy_output(_with_lora(base, "first-diffusers.safetensors", 0.0)) - plain).abs().max() <= TOLERANCE
    _comfy_output(_with_lora(base, "first-diffusers.safetensors", 1.0))
    assert (_comfy_output(base) - plain).abs().max() <= TOLERANCE  # the MODEL without the LoRA is untouched


def _merge_all(plain_model, adapters):
    """diffusers weights with several PEFT adapters merged, each at its own strength."""
    reference = copy.deepcopy(plain_model)
    base = dict(plain_model.named_parameters())
    target = dict(reference.named_parameters())
    with torch.no_grad():
        for adapted, strength in adapters:
            for name, param in merged(adapted, strength).named_parameters():
                if "lora_" not in name:
                    plain = name.replace(".base_layer", "")
                    target[plain] += param - base[plain]
    return reference


def test_two_stacked_loras(base, loras, sigma_ckpt):
    stacked = _with_lora(_with_lora(base, "first-diffusers.safetensors", 1.0), "second-peft.safetensors", 0.5)
    reference = _merge_all(sigma_ckpt.model, [(loras["first"][0], 1.0), (loras["second"][0], 0.5)])
    assert (_comfy_output(stacked) - _reference_output(reference)).abs().max().item() <= TOLERANCE


def test_unknown_keys_are_reported(base, loras, caplog):
    with caplog.at_level(logging.WARNING):
        patched = _with_lora(base, "with-unknown.safetensors", 1.0)
    assert "lora key not loaded: transformer.no_such_block.to_q.lora_A.weight" in caplog.text
    reference = _reference_output(merged(loras["first"][0], 1.0))
    assert (_comfy_output(patched) - reference).abs().max().item() <= TOLERANCE
