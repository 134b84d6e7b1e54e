"""Host tier: our loaders on the host's own loading pattern, on every supported ComfyUI.

Storage dtypes under dynamic VRAM, quantized files read as the host reads them (legacy scaled fp8, mixed-precision
comfy_quant), weights left unused refused, and the reload factory behind multi-GPU deep clones and non-dynamic
delegates. Features a host lacks are skipped with the reason (feature detection, as the nodes do).
"""
import pytest
import torch
from safetensors.torch import load_file, save_file

from bench.fixtures.models import original_layout, t5_state_dict, tiny_t5
from bench.fixtures.pack import import_comfy
from host.comfy_host import relative_l2, require_comfyui, sample_tiny, t5_conditioning
from host.quantized_files import (
    DIT_ALL_LINEARS,
    DIT_BLOCK_LINEARS,
    T5_LINEARS,
    legacy_scaled_fp8,
    linear_layers,
    mixed_precision,
    save,
)

COMFYUI = require_comfyui()
import_comfy(COMFYUI)

import comfy.model_management  # noqa: E402
import comfy.model_patcher  # noqa: E402
import comfy.utils  # noqa: E402

from pixart_sigma_nodes.nodes import host, model_loading, t5_encoder  # noqa: E402
from pixart_sigma_nodes.pixart.checkpoint import CheckpointError  # noqa: E402

HAS_MIXED_PRECISION = hasattr(comfy.utils, "detect_layer_quantization")
HAS_MULTIGPU = hasattr(comfy.model_patcher.ModelPatcher, "deepclone_multigpu")
TEXT = "a red dog riding a horse on the moon"
# A quantized file and its dequantized twin, both with fp32 unquantized layers, compute the same numbers; what is left
# is the order of float operations (measured: 0 for every T5 and mixed-precision DiT, 3.7e-7 for the legacy DiT).
ROUNDING = 1e-6


def _conds():
    generator = torch.Generator().manual_seed(5)
    positive = [[torch.randn(1, 300, 32, generator=generator), {"attention_mask": torch.tensor([[1] * 9 + [0] * 291])}]]
    negative = [[torch.randn(1, 300, 32, generator=generator), {"attention_mask": torch.tensor([[1] + [0] * 299])}]]
    return positive, negative


def _dit_forward(patcher) -> torch.Tensor:
    comfy.model_management.load_models_gpu([patcher])
    generator = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 12, 16, generator=generator)
    context = torch.randn(2, 300, 32, generator=generator)
    mask = torch.zeros(2, 300)
    mask[0, :7], mask[1, :40] = 1, 1
    with torch.no_grad():
        return patcher.model.diffusion_model(x, torch.tensor([900.0, 300.0]), context, attention_mask=mask,
                                             transformer_options={}).float()


def _t5_cond(clip) -> torch.Tensor:
    return t5_conditioning(clip, TEXT)


@pytest.fixture(scope="module")
def t5_fp32(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5_host")
    state = t5_state_dict(tiny_t5(seed=3))
    return state, save(state, str(folder / "t5-fp32.safetensors"))


@pytest.fixture(scope="module")
def dit_fp32(sigma_ckpt):
    return original_layout(sigma_ckpt.model, sigma_ckpt.null_caption)


# --- dynamic VRAM -------------------------------------------------------------------------------------------------

DTYPES = [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp8_e4m3fn", torch.float8_e4m3fn)]


@pytest.mark.parametrize("choice,dtype", DTYPES)
def test_dit_storage_dtype_under_dynamic_vram(simulated_nvidia, sigma_ckpt, choice, dtype):
    patcher = model_loading.load_dit_patcher(sigma_ckpt.paths["original_safetensors"], choice)  # an fp32 file
    dit = patcher.model.diffusion_model
    linears = [m for m in dit.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and {m.weight.dtype for m in linears} == {dtype}
    assert {p.dtype for p in dit.parameters()} == {dtype}
    positive, negative = _conds()
    out = sample_tiny(patcher, positive, negative)
    comfy.model_management.unload_all_models()
    print(f"\n{choice}: {len(linears)} Linear weights in {dtype}, latent std {out.std():.3f}")
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("choice,dtype", DTYPES)
def test_t5_storage_dtype_under_dynamic_vram(simulated_nvidia, t5_fp32, choice, dtype):
    _, path = t5_fp32
    clip = t5_encoder.load_t5_clip(path, dtype=choice)
    transformer = clip.cond_stage_model.t5xxl.transformer
    linears = [m for m in transformer.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and {m.weight.dtype for m in linears} == {dtype}
    assert {p.dtype for p in transformer.parameters()} == {dtype}
    assert torch.isfinite(_t5_cond(clip)).all()


# --- quantized files ----------------------------------------------------------------------------------------------

def _dequantized_twin(path: str, folder) -> str:
    """The quantized file read back from disk and dequantized by the published rule (weight = stored.float() * its
    scale: '.scale_weight' legacy, '.weight_scale' mixed precision; fp8 biases as floats), markers and per-layer
    format tensors dropped; saved in fp32 beside it. -> the twin's path"""
    stored = load_file(path)
    twin = {}
    for key, tensor in stored.items():
        if key == "scaled_fp8" or key.endswith((".scale_weight", ".weight_scale", ".comfy_quant")):
            continue
        scale = stored.get(key[: -len(".weight")] + ".scale_weight", stored.get(key[: -len(".weight")] + ".weight_scale"))
        twin[key] = tensor.float() * scale if key.endswith(".weight") and scale is not None else tensor.float()
    return save(twin, str(folder / "dequantized-twin.safetensors"))


def test_scaled_fp8_t5_equals_its_dequantized_twin(t5_fp32, tmp_path):
    state, _ = t5_fp32
    path = save(legacy_scaled_fp8(state, linear_layers(state, T5_LINEARS)), str(tmp_path / "t5-fp8-scaled.safetensors"))
    quantized = t5_encoder.load_t5_clip(path, dtype="fp32")
    reference = t5_encoder.load_t5_clip(_dequantized_twin(path, tmp_path), dtype="fp32")
    relative = relative_l2(_t5_cond(quantized), _t5_cond(reference))
    print(f"\nscaled fp8 T5 vs its dequantized fp32 twin: relative L2 {relative:.2e}")
    assert relative <= ROUNDING


def _mixed_precision_pair(load, state, layers, fmt, in_header, folder):
    """(the mixed-precision file loaded, its dequantized fp32 twin loaded); on a host that cannot read the format,
    checks that loading it is refused by name and returns None."""
    stored, header = mixed_precision(state, layers, fmt, in_header)
    path = save(stored, str(folder / f"{fmt}.safetensors"), header)
    if not HAS_MIXED_PRECISION:
        with pytest.raises(CheckpointError, match="mixed-precision quantization"):
            load(path)
        return None
    return load(path, "fp32"), load(_dequantized_twin(path, folder), "fp32")


@pytest.mark.parametrize("fmt,in_header", [("float8_e4m3fn", True), ("float8_e5m2", False)])
def test_comfy_quant_t5_equals_its_dequantized_twin(t5_fp32, tmp_path, fmt, in_header):
    state, _ = t5_fp32
    pair = _mixed_precision_pair(lambda path, dtype="default": t5_encoder.load_t5_clip(path, dtype=dtype), state,
                                 linear_layers(state, T5_LINEARS), fmt, in_header, tmp_path)
    if pair is None:
        return
    relative = relative_l2(*(_t5_cond(clip) for clip in pair))
    print(f"\n{fmt} comfy_quant T5 vs its dequantized fp32 twin: relative L2 {relative:.2e}")
    assert relative <= ROUNDING


def test_scaled_fp8_dit_equals_its_dequantized_twin(dit_fp32, tmp_path):
    path = save(legacy_scaled_fp8(dit_fp32, linear_layers(dit_fp32, DIT_ALL_LINEARS)),
                str(tmp_path / "dit-fp8-scaled.safetensors"))
    quantized = model_loading.load_dit_patcher(path, "fp32")
    reference = model_loading.load_dit_patcher(_dequantized_twin(path, tmp_path), "fp32")
    relative = relative_l2(_dit_forward(quantized), _dit_forward(reference))
    print(f"\nscaled fp8 DiT vs its dequantized fp32 twin: relative L2 {relative:.2e}")
    assert relative <= ROUNDING


@pytest.mark.parametrize("fmt,in_header", [("float8_e4m3fn", True), ("float8_e5m2", False)])
def test_comfy_quant_dit_equals_its_dequantized_twin(dit_fp32, tmp_path, fmt, in_header):
    pair = _mixed_precision_pair(model_loading.load_dit_patcher, dit_fp32, linear_layers(dit_fp32, DIT_BLOCK_LINEARS), fmt,
                                 in_header, tmp_path)
    if pair is None:
        return
    relative = relative_l2(*(_dit_forward(patcher) for patcher in pair))
    positive, negative = _conds()
    sampled = sample_tiny(pair[0], positive, negative)
    print(f"\n{fmt} comfy_quant DiT vs its dequantized fp32 twin: relative L2 {relative:.2e}")
    assert relative <= ROUNDING and torch.isfinite(sampled).all()


def test_fp8_choice_on_a_quantized_file_is_refused(dit_fp32, tmp_path):
    path = save(legacy_scaled_fp8(dit_fp32, linear_layers(dit_fp32, DIT_BLOCK_LINEARS)),
                str(tmp_path / "dit-fp8-scaled.safetensors"))
    with pytest.raises(CheckpointError, match="already quantized.*weight_dtype"):
        model_loading.load_dit_patcher(path, "fp8_e4m3fn")


# --- weights left unused ------------------------------------------------------------------------------------------

def test_unused_dit_weights_are_an_error(dit_fp32, tmp_path):
    extra = {**dit_fp32, "blocks.0.attn.qkv.scale_weight": torch.tensor(0.5)}  # a scale without the marker
    path = save(extra, str(tmp_path / "dit-stray-scale.safetensors"))
    with pytest.raises(CheckpointError, match=r"dit-stray-scale\.safetensors.*unused.*scale_weight"):
        model_loading.load_dit_patcher(path)


def test_unused_t5_weights_are_an_error(t5_fp32, tmp_path):
    state, _ = t5_fp32
    extra = {**state, "encoder.block.0.layer.0.SelfAttention.q.scale_weight": torch.tensor(0.5)}
    path = str(tmp_path / "t5-stray-scale.safetensors")
    save_file(extra, path)
    with pytest.raises(CheckpointError, match=r"t5-stray-scale\.safetensors.*unused.*scale_weight"):
        t5_encoder.load_t5_clip(path)


# --- multi-GPU deep clones and non-dynamic delegates -------------------------------------------------------------

def _deep_clones(patcher):
    """The two ways the host reloads a model from the loader's cached_patcher_init factory."""
    clones = {"clone(disable_dynamic=True)": patcher.clone(disable_dynamic=True, force_deepcopy=True)}
    clones["deepclone_multigpu"] = patcher.deepclone_multigpu(new_load_device=torch.device("cpu"))
    return clones


@pytest.mark.skipif(not HAS_MULTIGPU, reason="this ComfyUI has no multi-GPU deep clones (deepclone_multigpu)")
@pytest.mark.parametrize("loader", ["dit", "repo"])
def test_model_reloads_through_its_factory(sigma_ckpt, loader):
    path = sigma_ckpt.paths["original_safetensors" if loader == "dit" else "diffusers_repo"]
    patcher = model_loading.load_dit_patcher(path, "fp32")
    positive, negative = _conds()
    reference = sample_tiny(patcher, positive, negative)
    for how, clone in _deep_clones(patcher).items():
        assert clone.model is not patcher.model, how
        assert not host.is_dynamic(clone) or how == "deepclone_multigpu", how
        assert torch.equal(sample_tiny(clone, positive, negative), reference), how


@pytest.mark.skipif(not HAS_MULTIGPU, reason="this ComfyUI has no multi-GPU deep clones (deepclone_multigpu)")
@pytest.mark.parametrize("layout", ["file", "folder"])
def test_clip_reloads_through_its_factory(t5_fp32, tmp_path, layout):
    state, path = t5_fp32
    if layout == "folder":  # a diffusers text_encoder folder, as the repo loader reads it
        tiny_t5(seed=3).save_pretrained(str(tmp_path / "text_encoder"))
        path = str(tmp_path / "text_encoder")
    clip = t5_encoder.load_t5_clip(path, dtype="fp32")
    reference = _t5_cond(clip)
    assert torch.equal(_t5_cond(clip.clone(disable_dynamic=True)), reference)
    for how, clone in _deep_clones(clip.patcher).items():
        assert clone.model is not clip.patcher.model, how
        copy = clip.clone()
        copy.patcher, copy.cond_stage_model = clone, clone.model
        assert torch.equal(_t5_cond(copy), reference), how
