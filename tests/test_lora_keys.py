"""LoRA key mapping: every module a PEFT LoRA on PixArtTransformer2DModel can target lands on our weights, q/k/v
on the right rows of the fused projections, in every supported layout."""
import pytest
import torch

from lora_fixtures import ALL_TARGETS, onetrainer_layout, peft_lora
from pixart_sigma_nodes.pixart import load_dit
from pixart_sigma_nodes.pixart.lora_keys import common_module_names, lora_key_map, rename_lora


@pytest.fixture(scope="module")
def mapping(sigma_ckpt):
    model = load_dit(sigma_ckpt.paths["original_safetensors"])
    weights = dict(model.state_dict())
    return lora_key_map(model.config.depth, model.config.hidden_size, weights), weights


def _modules(state):
    return sorted({key.rsplit(".lora_", 1)[0] for key in state})


def test_every_peft_target_maps_with_matching_shapes(sigma_ckpt, mapping):
    key_map, weights = mapping
    _, state = peft_lora(sigma_ckpt.model, ALL_TARGETS)
    modules = _modules(state)
    # every Linear/Conv of the diffusers model is targeted, so this covers all a LoRA can touch
    layers = {n for n, m in sigma_ckpt.model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}
    assert set(modules) == layers
    for module in modules:
        down, up = state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"]
        for name in (f"transformer.{module}", f"base_model.model.{module}", f"unet.base_model.model.{module}", module,
                     "lora_transformer_" + module.replace(".", "_")):
            assert name in key_map, f"{name} is not mapped"
            weight, rows = key_map[name]
            target = weights[weight]
            assert target.shape[1] == down.shape[1], name
            assert (rows[1] if rows else target.shape[0]) == up.shape[0], name


def test_fused_rows(mapping):
    key_map, _ = mapping
    hidden = 144
    assert key_map["transformer.transformer_blocks.1.attn1.to_q"] == ("blocks.1.attn.qkv.weight", (0, hidden))
    assert key_map["transformer.transformer_blocks.1.attn1.to_k"] == ("blocks.1.attn.qkv.weight", (hidden, hidden))
    assert key_map["transformer.transformer_blocks.1.attn1.to_v"] == ("blocks.1.attn.qkv.weight", (2 * hidden, hidden))
    assert key_map["transformer.transformer_blocks.0.attn2.to_q"] == ("blocks.0.cross_attn.q_linear.weight", None)
    assert key_map["transformer.transformer_blocks.0.attn2.to_v"] == ("blocks.0.cross_attn.kv_linear.weight",
                                                                      (hidden, hidden))


def test_fused_slices_reproduce_the_separate_projections(sigma_ckpt, mapping):
    """Adding each separate q/k/v delta on its rows of the fused weight equals diffusers' weights + deltas."""
    key_map, weights = mapping
    _, state = peft_lora(sigma_ckpt.model, ALL_TARGETS)
    patched = {k: v.clone() for k, v in weights.items()}
    for module in _modules(state):
        delta = (state[f"{module}.lora_B.weight"].flatten(1) @ state[f"{module}.lora_A.weight"].flatten(1))
        weight, rows = key_map[f"transformer.{module}"]
        view = patched[weight] if rows is None else patched[weight][rows[0]:rows[0] + rows[1]]
        view += delta.reshape(view.shape)
    reference = dict(sigma_ckpt.model.state_dict())
    for module in _modules(state):
        delta = state[f"{module}.lora_B.weight"].flatten(1) @ state[f"{module}.lora_A.weight"].flatten(1)
        reference[f"{module}.weight"] = reference[f"{module}.weight"] + delta.reshape(reference[f"{module}.weight"].shape)
    from pixart_sigma_nodes.pixart.checkpoint.layouts import diffusers_to_internal

    converted = diffusers_to_internal({k: v for k, v in reference.items()}, "reference")
    for key, tensor in converted.items():
        assert torch.allclose(patched[key], tensor, atol=1e-6), key


def test_internal_names_and_unknown_keys(mapping):
    key_map, _ = mapping
    assert key_map["diffusion_model.blocks.0.attn.qkv"] == ("blocks.0.attn.qkv.weight", None)
    assert key_map["lora_unet_blocks_0_attn_qkv"] == ("blocks.0.attn.qkv.weight", None)
    assert key_map["blocks.1.mlp.fc2"] == ("blocks.1.mlp.fc2.weight", None)
    assert "transformer.transformer_blocks.7.attn1.to_q" not in key_map  # block 7 does not exist: left for reporting
    assert "transformer.adaln_single.emb.resolution_embedder.linear_1" not in key_map  # no micro-conditions here


def test_onetrainer_names(sigma_ckpt, mapping):
    key_map, _ = mapping
    _, state = peft_lora(sigma_ckpt.model, ALL_TARGETS)
    converted = onetrainer_layout(state, 4)
    modules = {key.split(".")[0] for key in converted}  # lora_transformer_transformer_blocks_0_attn1_to_q
    assert len(modules) == len(_modules(state)) and all(module in key_map for module in modules)


def test_every_layout_renamed_to_names_core_reads(sigma_ckpt, mapping):
    """OneTrainer / unprefixed PEFT / original names -> `diffusion_model.<module>` for whole weights and
    `transformer.transformer_blocks.N.attn{1,2}.to_{q,k,v}` for fused rows; adapter suffixes kept; unknown keys listed."""
    key_map, weights = mapping
    names = common_module_names(2, 144, weights)
    _, state = peft_lora(sigma_ckpt.model, ALL_TARGETS)
    onetrainer = onetrainer_layout(state, 4)
    renamed, unknown = rename_lora({**onetrainer, "lora_transformer_nothing.alpha": torch.tensor(1.0)}, names)
    assert unknown == ["lora_transformer_nothing.alpha"]
    assert renamed["transformer.transformer_blocks.1.attn1.to_k.lora_down.weight"] is onetrainer[
        "lora_transformer_transformer_blocks_1_attn1_to_k.lora_down.weight"]
    assert "diffusion_model.blocks.0.mlp.fc2.alpha" in renamed
    assert "diffusion_model.t_block.1.lora_up.weight" in renamed
    for key in renamed:
        module = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
        if key in unknown:
            continue
        assert module.startswith("diffusion_model.") or module.startswith("transformer.transformer_blocks."), key
        target = key_map[module] if module in key_map else None
        assert target is not None, key
    bare = rename_lora({"blocks.0.attn.proj.hada_w1_a": torch.zeros(1), "transformer_blocks.0.attn2.to_v.lora_A.weight":
                        torch.zeros(1)}, names)[0]
    assert set(bare) == {"diffusion_model.blocks.0.attn.proj.hada_w1_a",
                         "transformer.transformer_blocks.0.attn2.to_v.lora_A.weight"}
