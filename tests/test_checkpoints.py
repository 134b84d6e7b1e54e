"""Every checkpoint layout loads to the same model; bad files fail with a clear message and run no code."""
import json
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from pixart_sigma_nodes.pixart import CheckpointError, load_dit, read_dit_weights
from pixart_sigma_nodes.pixart.config import ALPHA, SIGMA

EXACT_LAYOUTS = ["original_pth", "original_safetensors", "diffusers_single", "diffusers_repo",
                 "diffusers_transformer_folder"]


def _forward(model, tokens):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(1, 4, 12, 16, generator=generator)
    context = torch.randn(1, tokens, 32, generator=generator)
    mask = torch.zeros(1, tokens)
    mask[0, :9] = 1
    with torch.no_grad():
        return model(x, torch.tensor([500.0]), context, mask)


@pytest.mark.parametrize("ckpt_name", ["sigma_ckpt", "alpha_ckpt"])
def test_every_layout_gives_identical_outputs(ckpt_name, request):
    ckpt = request.getfixturevalue(ckpt_name)
    reference = load_dit(ckpt.paths["original_pth"])
    expected = _forward(reference, ckpt.tokens)
    for layout in EXACT_LAYOUTS:
        model = load_dit(ckpt.paths[layout])
        assert model.config == reference.config, layout
        assert torch.equal(_forward(model, ckpt.tokens), expected), layout


@pytest.mark.parametrize("layout,dtype", [("prefixed_fp16_pth", torch.float16), ("original_bf16", torch.bfloat16),
                                          ("original_fp8", torch.float8_e4m3fn)])
def test_reduced_precision_files_hold_the_rounded_weights(sigma_ckpt, layout, dtype):
    weights = read_dit_weights(sigma_ckpt.paths[layout])
    reference = read_dit_weights(sigma_ckpt.paths["original_safetensors"])
    assert weights.config == reference.config
    assert set(weights.state_dict) == set(reference.state_dict)
    for name, tensor in weights.state_dict.items():
        assert tensor.dtype == dtype, name  # stored dtype kept for ComfyUI's casting ops
        assert torch.equal(tensor.float(), reference.state_dict[name].to(dtype).float()), name
    model = load_dit(sigma_ckpt.paths[layout])  # loads into an fp32 model too
    assert torch.isfinite(_forward(model, 300)).all()


def test_detected_configs(sigma_ckpt, alpha_ckpt):
    sigma = read_dit_weights(sigma_ckpt.paths["original_pth"]).config
    assert (sigma.family, sigma.caption_tokens, sigma.sample_size, sigma.pe_interpolation) == (SIGMA, 300, 128, 2.0)
    assert (sigma.hidden_size, sigma.depth, sigma.num_heads, sigma.out_channels) == (144, 2, 2, 8)
    assert sigma.learned_sigma and not sigma.micro_conditions and sigma.has_null_caption
    alpha = read_dit_weights(alpha_ckpt.paths["diffusers_single"]).config
    assert (alpha.family, alpha.caption_tokens, alpha.micro_conditions, alpha.sample_size) == (ALPHA, 120, True, 128)


@pytest.mark.parametrize("side,family,pe", [(32, "sigma", 0.5), (64, "sigma", 1.0), (256, "sigma", 4.0),
                                            (32, "alpha", 1.0), (64, "alpha", 1.0)])
def test_trained_size_from_pos_embed(tmp_path, side, family, pe):
    from bench.fixtures.models import original_layout, tiny_transformer

    model, null = tiny_transformer(family, False, depth=1, sample_size=side)
    path = str(tmp_path / "checkpoint.pth")
    torch.save({"state_dict": original_layout(model, null)}, path)
    config = read_dit_weights(path).config
    assert (config.family, config.sample_size, config.pe_interpolation, config.base_size) == (family, side, pe, side // 2)


def test_diffusers_file_without_null_caption_uses_name_and_warns(tmp_path, sigma_ckpt, caplog):
    sd = {k: v for k, v in sigma_ckpt.model.state_dict().items()}
    path = str(tmp_path / "pixart_alpha_512.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, path)
    config = read_dit_weights(path).config
    assert (config.family, config.sample_size, config.has_null_caption) == (ALPHA, 64, False)
    unnamed = str(tmp_path / "transformer.safetensors")
    save_file({k: v.contiguous() for k, v in sd.items()}, unnamed)
    with caplog.at_level("WARNING"):
        config = read_dit_weights(unnamed).config
    assert config.family == SIGMA and "assumed" in caplog.text


def _expect_error(path, *fragments):
    with pytest.raises(CheckpointError) as info:
        load_dit(path)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_truncated_files(tmp_path, sigma_ckpt):
    for layout, suffix in (("original_safetensors", ".safetensors"), ("original_pth", ".pth")):
        data = open(sigma_ckpt.paths[layout], "rb").read()
        path = tmp_path / f"cut{suffix}"
        path.write_bytes(data[: len(data) // 2])
        _expect_error(str(path), f"cut{suffix}", "truncated", "download it again")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.safetensors"
    path.write_bytes(b"")
    _expect_error(str(path), "empty.safetensors", "empty")


def test_non_pixart_files_say_what_they_look_like(tmp_path):
    t5 = {"shared.weight": torch.zeros(8, 4), "encoder.block.0.layer.0.SelfAttention.q.weight": torch.zeros(4, 4),
          "encoder.final_layer_norm.weight": torch.zeros(4)}
    save_file(t5, str(tmp_path / "t5xxl.safetensors"))
    _expect_error(str(tmp_path / "t5xxl.safetensors"), "t5xxl.safetensors", "not a PixArt DiT", "T5 text encoder")
    unet = {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3)}
    save_file(unet, str(tmp_path / "sd15.safetensors"))
    _expect_error(str(tmp_path / "sd15.safetensors"), "Stable Diffusion UNet")
    save_file({"foo.bar": torch.zeros(2)}, str(tmp_path / "random.safetensors"))
    _expect_error(str(tmp_path / "random.safetensors"), "match no known model layout")


class _Payload:
    """A pickle that would create a file when unpickled."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    with open(path, "wb") as fh:
        pickle.dump({"state_dict": {"x": _Payload(str(marker))}}, fh)
    torch.save({"state_dict": {"x": _Payload(str(marker))}}, str(tmp_path / "evil_zip.pth"))
    assert not marker.exists()
    for name in ("evil.pth", "evil_zip.pth"):
        _expect_error(str(tmp_path / name), name, "refused", "never unpickled")
    assert not marker.exists(), "the pickle's code ran"


def test_diffusers_folder_without_config(tmp_path, sigma_ckpt):
    folder = tmp_path / "broken" / "transformer"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in sigma_ckpt.model.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))
    _expect_error(str(folder.parent), "broken", "no config.json")


def test_incomplete_checkpoint(tmp_path, sigma_ckpt):
    weights = read_dit_weights(sigma_ckpt.paths["original_safetensors"]).state_dict
    partial = {k: v for k, v in weights.items() if "blocks.1." not in k or "mlp" not in k}
    partial["t_block.1.weight"] = weights["t_block.1.weight"]
    save_file(partial, str(tmp_path / "partial.safetensors"))
    _expect_error(str(tmp_path / "partial.safetensors"), "partial.safetensors", "missing")


def test_sharded_index_names_missing_shard(tmp_path, sigma_ckpt):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(sigma_ckpt.paths["diffusers_repo"], repo)
    os.remove(repo / "transformer" / "diffusion_pytorch_model-00002-of-00002.safetensors")
    _expect_error(str(repo), "00002-of-00002", "missing")


def test_config_json_is_honoured(tmp_path, sigma_ckpt):
    import shutil

    repo = tmp_path / "repo"
    shutil.copytree(sigma_ckpt.paths["diffusers_repo"], repo)
    config_path = repo / "transformer" / "config.json"
    config = json.loads(config_path.read_text())
    config["interpolation_scale"] = 0.5
    config_path.write_text(json.dumps(config))
    assert read_dit_weights(str(repo)).config.pe_interpolation == 0.5


def test_quantized_files_are_recognised_and_kept_whole(tmp_path, sigma_ckpt):
    """ComfyUI's quantized layouts: detected from keys or header, config read past the extra tensors, which stay with
    their layers for the host's ops; a quantized diffusers-layout file (q/k/v scaled apart) is refused."""
    from pixart_sigma_nodes.pixart.checkpoint.quantization import LEGACY_SCALED_FP8, MIXED_PRECISION

    plain = read_dit_weights(sigma_ckpt.paths["original_safetensors"])
    assert plain.quantization is None
    legacy = {**plain.state_dict, "scaled_fp8": torch.empty(0, dtype=torch.float8_e4m3fn),
              "blocks.0.attn.qkv.weight": plain.state_dict["blocks.0.attn.qkv.weight"].to(torch.float8_e4m3fn),
              "blocks.0.attn.qkv.scale_weight": torch.tensor(0.01)}
    save_file(legacy, str(tmp_path / "legacy.safetensors"))
    weights = read_dit_weights(str(tmp_path / "legacy.safetensors"))
    assert weights.quantization == LEGACY_SCALED_FP8 and weights.config == plain.config
    assert {"scaled_fp8", "blocks.0.attn.qkv.scale_weight"} <= set(weights.state_dict)
    header = {"_quantization_metadata": json.dumps({"format_version": "1.0",
                                                    "layers": {"blocks.0.attn.qkv": {"format": "float8_e4m3fn"}}})}
    mixed = {k: v for k, v in legacy.items() if k not in ("scaled_fp8", "blocks.0.attn.qkv.scale_weight")}
    save_file({**mixed, "blocks.0.attn.qkv.weight_scale": torch.tensor(0.01)}, str(tmp_path / "mixed.safetensors"),
              metadata=header)
    weights = read_dit_weights(str(tmp_path / "mixed.safetensors"))
    assert weights.quantization == MIXED_PRECISION and weights.metadata == header
    with pytest.raises(CheckpointError, match="quantized.*only ComfyUI's casting ops"):
        load_dit(str(tmp_path / "mixed.safetensors"))
    diffusers = {k: v.contiguous() for k, v in sigma_ckpt.model.state_dict().items()}
    diffusers["transformer_blocks.0.attn1.to_q.scale_weight"] = torch.tensor(0.01)
    save_file(diffusers, str(tmp_path / "diffusers-scaled.safetensors"))
    with pytest.raises(CheckpointError, match="diffusers-scaled.safetensors is a quantized diffusers-layout file"):
        read_dit_weights(str(tmp_path / "diffusers-scaled.safetensors"))


def test_depth_42_experts_are_read_from_their_weights(tmp_path):
    """The 900M PixArt-Σ experts have 42 blocks: depth is counted, KV compression's default deep half scales to it."""
    from bench.fixtures.models import original_layout, tiny_transformer
    from pixart_sigma_nodes.pixart.kv_compress import default_layers

    model, null_caption = tiny_transformer("sigma", False, depth=42, seed=4)
    save_file(original_layout(model, null_caption), str(tmp_path / "PixArt-Sigma-900M-stage2.safetensors"))
    dit = load_dit(str(tmp_path / "PixArt-Sigma-900M-stage2.safetensors"))
    assert dit.config.depth == 42 and len(dit.blocks) == 42
    assert default_layers(42) == frozenset(range(21, 42))
    x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    context = torch.randn(1, 300, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = dit(x, torch.tensor([300.0]), context)
        ref = model(x, encoder_hidden_states=context, timestep=torch.tensor([300.0]), return_dict=False)[0]
    assert (ours - ref).abs().max() <= 1e-5
