"""Host tier: the pack leaves the host as it found it, and the one host routine it has to copy behaves as the host's.

- After the extension loads (entry point, on_load, node list), the functions of comfy.lora, comfy.sample, comfy.sd,
  comfy.samplers, comfy.model_base, comfy.model_patcher, comfy.k_diffusion.sampling and nodes are the host's own
  objects; the only additions are the listed sampler and scheduler names, appended; a core model's (a tiny
  SD1.5-shaped UNet) LoRA key map and the sampler/scheduler lists equal what a ComfyUI without the pack computes
  (a fresh process).
- The DiT loader builds its model as core's loader cannot (core detects PixArt as its own PixArtMS): its decisions
  (storage and compute dtype, casting ops, patcher class, devices, fp8 matmul) are compared with
  comfy.sd.load_diffusion_model_state_dict loading the same PixArt file, per weight dtype choice and file dtype, on
  this CPU and on a simulated NVIDIA GPU with dynamic VRAM.
"""
import asyncio
import importlib
import inspect
import json
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.fixtures.pack import import_comfy
from host.comfy_host import require_comfyui

COMFYUI = require_comfyui()
pack = import_comfy(COMFYUI)

import comfy.model_management  # noqa: E402
import comfy.sd  # noqa: E402

from pixart_sigma_nodes.nodes import model_loading, samplers, scheduler  # noqa: E402
from pixart_sigma_nodes.pixart.config import DiTConfig  # noqa: E402
from pixart_sigma_nodes.pixart.dit import PixArtDiT  # noqa: E402

HOST_MODULES = ("comfy.lora", "comfy.sample", "comfy.sd", "comfy.samplers", "comfy.model_base", "comfy.model_patcher",
                "comfy.k_diffusion.sampling", "nodes")
ADDED_FUNCTIONS = {f"sample_{name}" for name in samplers.SAMPLERS}  # comfy.k_diffusion.sampling.sample_<name>
TINY_SD15 = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
             "legacy": False, "in_channels": 4, "model_channels": 32, "num_res_blocks": [1, 1],
             "transformer_depth": [1, 1], "channel_mult": [1, 2], "transformer_depth_middle": 1,
             "use_linear_in_transformer": False, "context_dim": 32, "num_head_channels": 8, "num_heads": -1,
             "transformer_depth_output": [1, 1, 1, 1], "use_temporal_attention": False,
             "use_temporal_resblock": False, "adm_in_channels": None}

HOST_STATE = """
import json, sys
sys.argv = ["main.py", "--cpu"]
import comfy.cli_args
comfy.cli_args.args.cpu = True
import comfy.lora, comfy.samplers, comfy.supported_models
model = comfy.supported_models.SD15(json.loads(CONFIG)).get_model({})
lists = comfy.samplers.KSampler
print(json.dumps({"samplers": list(lists.SAMPLERS), "schedulers": list(lists.SCHEDULERS),
                  "lora_keys": {k: str(v) for k, v in comfy.lora.model_lora_keys_unet(model, {}).items()}}))
"""


def _host_state():
    import comfy.lora
    import comfy.samplers
    import comfy.supported_models

    model = comfy.supported_models.SD15(TINY_SD15).get_model({})
    return {"samplers": list(comfy.samplers.KSampler.SAMPLERS), "schedulers": list(comfy.samplers.KSampler.SCHEDULERS),
            "lora_keys": {k: str(v) for k, v in comfy.lora.model_lora_keys_unet(model, {}).items()}}


@pytest.fixture(scope="module")
def loaded_extension():
    extension = asyncio.run(pack.comfy_entrypoint())
    asyncio.run(extension.on_load())
    asyncio.run(extension.get_node_list())
    return extension


def test_host_functions_are_the_hosts_own(loaded_extension):
    ours = []
    for name in HOST_MODULES:
        importlib.import_module(name)
        module = sys.modules[name]
        for attribute, value in vars(module).items():
            if inspect.isfunction(value) and value.__module__.startswith(pack.__name__):
                ours.append(f"{name}.{attribute}")
            elif inspect.isfunction(value) and attribute in ADDED_FUNCTIONS:
                ours.append(f"{name}.{attribute}")  # an addition must be ours, not a host function renamed
    assert sorted(ours) == sorted(f"comfy.k_diffusion.sampling.{name}" for name in ADDED_FUNCTIONS)
    import comfy.lora
    import comfy.sample

    assert comfy.lora.model_lora_keys_unet.__module__ == "comfy.lora"
    assert comfy.sample.sample.__module__ == "comfy.sample"
    assert comfy.sd.load_lora_for_models.__module__ == "comfy.sd"


def test_core_model_and_lists_equal_a_host_without_the_pack(loaded_extension):
    code = HOST_STATE.replace("CONFIG", repr(json.dumps(TINY_SD15)))
    fresh = subprocess.run([sys.executable, "-c", code], cwd=COMFYUI, capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    without = json.loads(fresh.stdout.strip().splitlines()[-1])
    with_pack = _host_state()
    assert with_pack["lora_keys"] == without["lora_keys"] and len(without["lora_keys"]) > 1000
    added_samplers, added_schedulers = list(samplers.SAMPLERS), list(scheduler.SCHEDULERS)
    assert with_pack["samplers"] == without["samplers"] + added_samplers
    assert with_pack["schedulers"] == without["schedulers"] + added_schedulers


# --- the loader copy, pinned to comfy.sd.load_diffusion_model_state_dict ------------------------------------------

@pytest.fixture(scope="module")
def full_width_files(tmp_path_factory):
    """A one-block PixArt-Σ at the published width (1152, 16 heads, T5 4096), original layout, in fp32/fp16/bf16: the
    shape core's PixArt detection assumes, so core's own loader loads it completely."""
    config = DiTConfig(family="sigma", hidden_size=1152, depth=1, num_heads=16, patch_size=2, in_channels=4,
                       out_channels=8, mlp_hidden=4608, caption_channels=4096, caption_tokens=300, sample_size=32,
                       pe_interpolation=0.5, has_null_caption=True)
    generator = torch.Generator().manual_seed(0)
    state = {k: torch.randn(v.shape, generator=generator) * 0.02 for k, v in PixArtDiT(config).state_dict().items()}
    state["pos_embed"] = torch.zeros(1, 256, 1152)
    folder = tmp_path_factory.mktemp("full_width")
    paths = {}
    for label, dtype in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        paths[label] = str(folder / f"sigma-1block-{label}.safetensors")
        save_file({k: v.to(dtype) for k, v in state.items()}, paths[label])
    return paths


def _decisions(patcher) -> dict:
    model = patcher.model
    layer = model.diffusion_model.t_block[1]
    return {"patcher": type(patcher).__name__, "storage": model.get_dtype(), "manual_cast": model.manual_cast_dtype,
            "weight": layer.weight.dtype, "ops": type(layer).__qualname__,
            "fp8_matmul": bool(model.model_config.optimizations.get("fp8", False)),
            "load_device": str(patcher.load_device), "offload_device": str(patcher.offload_device),
            "dynamic": bool(getattr(patcher, "is_dynamic", lambda: False)())}


def _core_load(path, weight_dtype):
    """Core's diffusion-model loading with the options UNETLoader passes for the same choice (the file read with
    safetensors: comfy.utils.load_torch_file would read through comfy-aimdo, which the simulation does not start)."""
    options = dict(model_loading.WEIGHT_DTYPES[weight_dtype])
    return comfy.sd.load_diffusion_model_state_dict(load_file(path), model_options=options)


CASES = [("fp32", "default"), ("fp16", "default"), ("bf16", "default"), ("fp32", "bf16"), ("fp32", "fp16"),
         ("fp16", "fp32"), ("fp32", "fp8_e4m3fn"), ("fp32", "fp8_e4m3fn_fast"), ("bf16", "fp8_e5m2")]


@pytest.mark.parametrize("stored, weight_dtype", CASES, ids=[f"{s}-{w}" for s, w in CASES])
def test_dit_loader_decides_as_core_loader_on_cpu(full_width_files, stored, weight_dtype):
    core = _decisions(_core_load(full_width_files[stored], weight_dtype))
    ours = _decisions(model_loading.load_dit_patcher(full_width_files[stored], weight_dtype))
    assert ours == core


@pytest.mark.parametrize("stored, weight_dtype", CASES, ids=[f"{s}-{w}" for s, w in CASES])
def test_dit_loader_decides_as_core_loader_on_simulated_nvidia(simulated_nvidia, monkeypatch, full_width_files,
                                                               stored, weight_dtype):
    """With dynamic VRAM on and a GPU computing natively in half precision: unet_dtype as such a GPU answers it (the
    file's half dtype, bf16 for fp32 files). Every decision is core's; one difference is deliberate: dynamic VRAM's
    lazy layers keep the tensors they are given, so core's loader leaves the file's dtype in them (to be cast later,
    on the device), while ours casts to the chosen storage dtype first, so a bf16/fp16/fp8 choice really holds
    bf16/fp16/fp8 in RAM."""
    def native_unet_dtype(device=None, model_params=0, supported_dtypes=(), weight_dtype=None):
        return weight_dtype if weight_dtype in (torch.float16, torch.bfloat16) else torch.bfloat16

    monkeypatch.setattr(comfy.model_management, "unet_dtype", native_unet_dtype)
    core = _decisions(_core_load(full_width_files[stored], weight_dtype))
    ours = _decisions(model_loading.load_dit_patcher(full_width_files[stored], weight_dtype))
    assert ours["weight"] == ours["storage"]
    assert core["weight"] == {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[stored]
    assert {**ours, "weight": None} == {**core, "weight": None}
    if weight_dtype == "default":
        assert ours["storage"] in (torch.float16, torch.bfloat16)
