"""Host tier: PixArt LoRAs through ComfyUI's own LoraLoaderModelOnly, against PEFT-merged diffusers weights."""
import copy
import importlib
import logging

import pytest
import torch
from safetensors.torch import save_file

from bench.fixtures.models import original_layout
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


# --- LyCORIS and other adapter formats through core's LoraLoaderModelOnly ------------------------------------------

RANK = 4
# (module name in the file, the weight it changes, (first row, rows) of that weight or None); `H` is the hidden size
ADAPTED_MODULES = {
    "diffusers": [("transformer.transformer_blocks.0.attn1.to_q", "blocks.0.attn.qkv.weight", (0, "H")),
                  ("transformer.transformer_blocks.1.attn2.to_v", "blocks.1.cross_attn.kv_linear.weight", ("H", "H")),
                  ("transformer.transformer_blocks.0.ff.net.2", "blocks.0.mlp.fc2.weight", None)],
    "original": [("diffusion_model.blocks.0.attn.qkv", "blocks.0.attn.qkv.weight", None),
                 ("lora_unet_blocks_1_mlp_fc1", "blocks.1.mlp.fc1.weight", None),
                 ("diffusion_model.blocks.1.cross_attn.proj", "blocks.1.cross_attn.proj.weight", None)],
}


def _adapter(kind: str, module: str, shape: tuple[int, int], generator) -> tuple[dict, object]:
    """One module's tensors in `kind`'s layout (as LyCORIS/kohya trainers name them) and how the weight changes, written
    from each format's definition: -> (tensors, function(weight) -> the adapted weight at strength 1)."""
    out_dim, in_dim = shape
    alpha = 2.0

    def rand(*size):
        return torch.randn(*size, generator=generator) * 0.2

    if kind == "loha":  # dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / rank
        w1a, w1b, w2a, w2b = rand(out_dim, RANK), rand(RANK, in_dim), rand(out_dim, RANK), rand(RANK, in_dim)
        tensors = {"hada_w1_a": w1a, "hada_w1_b": w1b, "hada_w2_a": w2a, "hada_w2_b": w2b}
        delta = (w1a @ w1b) * (w2a @ w2b) * alpha / RANK
    elif kind == "lokr":  # dW = kron(w1, w2_a @ w2_b) * alpha / rank
        w1, w2a, w2b = rand(4, 2), rand(out_dim // 4, RANK), rand(RANK, in_dim // 2)
        tensors = {"lokr_w1": w1, "lokr_w2_a": w2a, "lokr_w2_b": w2b}
        delta = torch.kron(w1, w2a @ w2b) * alpha / RANK
    elif kind == "dora":  # W' = m * (W + dW) / ||W + dW|| with the norm over the output axis, one m per input column
        up, down, magnitude = rand(out_dim, RANK), rand(RANK, in_dim), 1 + rand(1, in_dim).abs()
        tensors = {"lora_up.weight": up, "lora_down.weight": down, "dora_scale": magnitude}

        def adapted(weight):
            merged = weight + up @ down * alpha / RANK
            return merged * magnitude / (merged.norm(dim=0, keepdim=True) + torch.finfo(weight.dtype).eps)

        return {**{f"{module}.{k}": v for k, v in tensors.items()}, f"{module}.alpha": torch.tensor(alpha)}, adapted
    else:  # full: dW = diff
        delta = rand(out_dim, in_dim)
        return {f"{module}.diff": delta}, lambda weight: weight + delta
    return ({**{f"{module}.{k}": v for k, v in tensors.items()}, f"{module}.alpha": torch.tensor(alpha)},
            lambda weight: weight + delta)


@pytest.fixture(scope="module")
def adapter_files(loras, sigma_ckpt, tmp_path_factory):
    """For each format and key layout: the file in models/loras and the hand-merged original-layout weights."""
    folder = tmp_path_factory.mktemp("adapters")
    folder_paths.add_model_folder_path("loras", str(folder))
    plain = original_layout(sigma_ckpt.model, sigma_ckpt.null_caption)
    hidden = sigma_ckpt.model.config.num_attention_heads * sigma_ckpt.model.config.attention_head_dim
    files = {}
    for kind in ("loha", "lokr", "dora", "full"):
        for layout, modules in ADAPTED_MODULES.items():
            generator = torch.Generator().manual_seed(len(files) + 7)
            tensors, merged = {}, {k: v.clone() for k, v in plain.items()}
            for module, weight_key, rows in modules:
                first, count = ((0, None) if rows is None else [hidden if r == "H" else r for r in rows])
                target = merged[weight_key] if rows is None else merged[weight_key][first:first + count]
                module_tensors, adapted = _adapter(kind, module, tuple(target.shape), generator)
                tensors.update(module_tensors)
                target.copy_(adapted(target.clone()))
            name = f"{kind}-{layout}.safetensors"
            save_file(tensors, str(folder / name))
            save_file(merged, str(folder / f"{kind}-{layout}-merged.safetensors"))
            files[(kind, layout)] = (name, str(folder / f"{kind}-{layout}-merged.safetensors"))
    return files


@pytest.mark.parametrize("layout", list(ADAPTED_MODULES))
@pytest.mark.parametrize("kind", ["loha", "lokr", "dora", "full"])
def test_adapter_formats_through_core_loader_equal_the_hand_merged_dit(base, adapter_files, kind, layout):
    """LoHa, LoKr, DoRA and full-diff files, in diffusers names (q/k/v on rows of the fused projections) and in
    original names (ComfyUI's diffusion_model. and kohya's lora_unet_), through core's LoraLoaderModelOnly."""
    name, merged_path = adapter_files[(kind, layout)]
    patched = _comfy_output(_with_lora(base, name, 1.0))
    reference = _comfy_output(model_loading.load_dit_patcher(merged_path, "fp32"))
    assert (reference - _comfy_output(base)).abs().max().item() > 1e-2  # the adapter does change the model
    assert (patched - reference).abs().max().item() <= TOLERANCE
