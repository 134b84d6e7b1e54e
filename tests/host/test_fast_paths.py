"""Host tier: the sampling fast paths give the same samples as the plain path.

Caption cache (each caption encoded once per run), the CPU attention choice, and the torch.compile node.
"""
import importlib

import pytest
import torch

from bench.fixtures.pack import import_comfy
from host.comfy_host import require_comfyui, sample_tiny

COMFYUI = require_comfyui()
import_comfy(COMFYUI)

import comfy.ldm.modules.attention as comfy_attention  # noqa: E402
import comfy.patcher_extension  # noqa: E402

from pixart_sigma_nodes.nodes import caption_cache, model_loading  # noqa: E402
from pixart_sigma_nodes.nodes.attention import attention_for  # noqa: E402
from pixart_sigma_nodes.nodes.compile_node import compile_blocks  # noqa: E402

comfy_nodes = importlib.import_module("nodes")  # ComfyUI's core nodes module


def _conds():
    generator = torch.Generator().manual_seed(7)
    positive = [[torch.randn(1, 300, 32, generator=generator), {"attention_mask": torch.tensor([[1] * 13 + [0] * 287])}]]
    negative = [[torch.randn(1, 300, 32, generator=generator), {"attention_mask": torch.tensor([[1] + [0] * 299])}]]
    return positive, negative


def _sample(patcher, steps=4, seed=0):
    return sample_tiny(patcher, *_conds(), seed=seed, steps=steps)


def _without_cache(patcher):
    plain = patcher.clone()
    plain.remove_wrappers_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, caption_cache.WRAPPER_KEY)
    return plain


@pytest.fixture(scope="module")
def patcher(sigma_ckpt):
    return model_loading.load_dit_patcher(sigma_ckpt.paths["original_safetensors"], "fp32")


def _counting_encodes(monkeypatch, patcher) -> list:
    """Records each call of the DiT's real encode_caption (which still runs)."""
    dit = patcher.model.diffusion_model
    calls = []
    encode = dit.encode_caption

    def counted(*args, **kwargs):
        calls.append(args[0].shape)
        return encode(*args, **kwargs)

    monkeypatch.setattr(dit, "encode_caption", counted)
    return calls


def test_caption_cache_reuses_captions_and_changes_nothing(patcher, monkeypatch):
    calls = _counting_encodes(monkeypatch, patcher)
    cached = _sample(patcher)
    assert len(calls) == 1  # cond and uncond batched in one call: one caption batch, encoded once for 4 steps
    calls.clear()
    plain = _sample(_without_cache(patcher))
    assert len(calls) == 4  # without the cache: every step
    assert torch.equal(cached, plain)


@pytest.fixture(scope="module")
def with_lora(sigma_ckpt, tmp_path_factory):
    """A function adding a LoRA on the attention projections (cross-attention K/V included) to a MODEL."""
    import folder_paths
    from safetensors.torch import save_file

    from lora_fixtures import peft_lora

    folder = tmp_path_factory.mktemp("fast-path-loras")
    folder_paths.add_model_folder_path("loras", str(folder))
    _, state = peft_lora(sigma_ckpt.model, ["to_q", "to_k", "to_v"], seed=3)
    save_file({f"transformer.{k}": v for k, v in state.items()}, str(folder / "kv-lora.safetensors"))
    return lambda model: comfy_nodes.LoraLoaderModelOnly().load_lora_model_only(model, "kv-lora.safetensors", 1.0)[0]


def _close(a, b, rtol=1e-5):
    """Equal up to float reordering, relative to the sample's scale (random tiny models give large latents)."""
    return (a - b).abs().max().item() <= rtol * b.abs().max().item()


def test_lora_applied_between_runs_is_seen(patcher, with_lora):
    """The cache lives for one run only: a LoRA added after a run changes the next run's captions' K/V."""
    before = _sample(patcher)
    with_lora = with_lora(patcher)
    after = _sample(with_lora)
    assert (after - before).abs().max() > 1e-4
    assert torch.equal(after, _sample(_without_cache(with_lora)))


def test_model_function_wrapper_turns_the_cache_off(patcher, monkeypatch):
    """A model_function_wrapper may rewrite the conditioning per step, so the run encodes at every step."""
    wrapped = patcher.clone()
    wrapped.set_model_unet_function_wrapper(lambda apply_model, args: apply_model(args["input"], args["timestep"],
                                                                                  **args["c"]))
    calls = _counting_encodes(monkeypatch, patcher)
    out = _sample(wrapped)
    assert len(calls) == 4
    assert torch.equal(out, _sample(patcher))


def test_cpu_attention_is_sdpa_and_equals_sub_quadratic(monkeypatch):
    monkeypatch.setattr(comfy_attention, "optimized_attention", comfy_attention.attention_sub_quad)
    chosen = attention_for(torch.device("cpu"))
    assert chosen is comfy_attention.get_attention_function("pytorch", None)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 256, 16 * 72, generator=generator)
    k, v = torch.randn(2, 2, 40, 16 * 72, generator=generator)
    mask = torch.zeros(2, 1, 1, 40)
    mask[1, ..., 9:] = -torch.finfo(torch.float32).max
    ours = chosen(q, k, v, 16, mask=mask)
    reference = comfy_attention.attention_sub_quad(q, k, v, 16, mask=mask)
    assert (ours - reference).abs().max().item() <= 1e-5


def test_explicit_attention_choice_is_kept(monkeypatch):
    from comfy.cli_args import args

    monkeypatch.setattr(comfy_attention, "optimized_attention", comfy_attention.attention_sub_quad)
    monkeypatch.setattr(args, "use_quad_cross_attention", True)
    assert attention_for(torch.device("cpu")) is comfy_attention.attention_sub_quad


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compiled_blocks_equal_eager_with_a_lora(patcher, with_lora, backend):
    import torch._dynamo

    torch._dynamo.reset()
    compiled = compile_blocks(patcher, backend, "default")
    assert _close(_sample(compiled), _sample(patcher))
    torch._dynamo.utils.counters.clear()
    again = _sample(compiled, steps=6, seed=1)
    recompiles = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert recompiles == 0, f"{recompiles} graphs compiled again for the same size"
    assert _close(again, _sample(patcher, steps=6, seed=1))
    assert patcher.model_options.get("torch_compile_kwargs") is None  # the input MODEL is left as it was
    # a LoRA after the compile node patches the real weights; the compiled blocks read them
    eager_lora = _sample(with_lora(patcher))
    assert (eager_lora - _sample(patcher)).abs().max() > 1e-4
    assert _close(_sample(with_lora(compiled)), eager_lora)


def test_compile_rejects_an_unknown_backend(patcher):
    with pytest.raises(ValueError, match="backend 'tensorrt' is unknown"):
        compile_blocks(patcher, "tensorrt", "default")


def test_compile_refuses_a_model_that_is_not_pixart(patcher):
    other = patcher.clone()
    other.add_object_patch("diffusion_model", torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not a PixArt DiT.*TorchCompileModel"):
        compile_blocks(other, "inductor", "default")


def test_weights_patched_in_place_get_new_keys(patcher):
    """A mid-run weight change (in place, or a swapped tensor) gives a new cache key: no stale keys/values."""
    model = patcher.model.diffusion_model
    context, mask = torch.randn(2, 300, 32), torch.ones(2, 300)
    options = {"uuids": ["a", "b"], "cond_or_uncond": [0, 1]}
    key = caption_cache.cache_key(model, options, context, mask, torch.float32)
    assert caption_cache.cache_key(model, options, context, mask, torch.float32) == key
    weight = model.blocks[-1].cross_attn.kv_linear.weight
    with torch.no_grad():
        weight.mul_(1.0)
    assert caption_cache.cache_key(model, options, context, mask, torch.float32) != key


def test_memory_estimate_counts_the_encoded_caption(patcher):
    import comfy.model_base
    import comfy.model_management

    model = patcher.model
    config = model.diffusion_model.config
    shape, conds = (2, 4, 64, 64), {"c_crossattn": [torch.Size([2, 300, 32])]}
    base = comfy.model_base.BaseModel.memory_required(model, shape, cond_shapes=conds)
    table = config.depth * 2 * 2 * 300 * config.hidden_size * comfy.model_management.dtype_size(model.get_dtype())
    assert model.memory_required(shape, cond_shapes=conds) == base + 2 * table
    assert model.memory_required(shape) == base + 2 * table  # no cond shapes: the caption budget, 300 tokens


def test_cache_works_with_weights_loaded_under_inference_mode(sigma_ckpt):
    """ComfyUI runs nodes under inference_mode, so a loader's weights are inference tensors (no version counter)."""
    with torch.inference_mode():
        loaded = model_loading.load_dit_patcher(sigma_ckpt.paths["original_safetensors"], "fp32")
        assert loaded.model.diffusion_model.blocks[0].cross_attn.kv_linear.weight.is_inference()
        cached = _sample(loaded)
        assert torch.equal(cached, _sample(_without_cache(loaded)))
