"""Host tier, in-process: our loaders inside a real ComfyUI (comfy ops, comfy attention, ModelPatcher)."""

import copy

import pytest
import torch
from safetensors.torch import save_file

from bench.fixtures.models import t5_state_dict, tiny_t5
from bench.fixtures.pack import import_comfy
from host.comfy_host import require_comfyui, sample_tiny

COMFYUI = require_comfyui()
pack = import_comfy(COMFYUI)

from pixart_sigma_nodes.nodes import model_loading, t5_encoder  # noqa: E402
from pixart_sigma_nodes.nodes.extension import PixArtExtension  # noqa: E402


@pytest.fixture(scope="module")
def t5_files(tmp_path_factory, tiny_tokenizer):
    model = tiny_t5()
    folder = tmp_path_factory.mktemp("t5")
    single = str(folder / "t5-tiny.safetensors")
    save_file(t5_state_dict(model), single)
    repo = folder / "repo"
    model.save_pretrained(str(repo / "text_encoder"), max_shard_size="200KB")
    tiny_tokenizer[0].save_pretrained(str(repo / "tokenizer"))
    fp16 = str(folder / "t5-tiny-fp16.safetensors")
    save_file({k: v.half() for k, v in t5_state_dict(model).items()}, fp16)
    return model, single, str(repo / "text_encoder"), fp16


def _reference_t5(model, tokenizer, text, length):
    enc = tokenizer(text.lower().strip(), padding="max_length", max_length=length, truncation=True,
                    add_special_tokens=True, return_tensors="pt")
    with torch.no_grad():
        return model(enc.input_ids, attention_mask=enc.attention_mask).last_hidden_state, enc.attention_mask


@pytest.mark.parametrize("layout", ["single", "folder"])
def test_t5_clip_equals_transformers(t5_files, tiny_tokenizer, layout):
    model, single, folder, _ = t5_files
    clip = t5_encoder.load_t5_clip(single if layout == "single" else folder, dtype="fp32")
    text = "A photo of a CAT riding the moon"
    out = clip.encode_from_tokens(clip.tokenize(text), return_dict=True)
    if layout == "folder":  # tokenizer found beside the weights
        tokenizer = tiny_tokenizer[0]
    else:  # ComfyUI's bundled T5 tokenizer
        from transformers import T5TokenizerFast

        tokenizer = T5TokenizerFast.from_pretrained(t5_encoder.BUNDLED_TOKENIZER)
    ref, mask = _reference_t5(model, tokenizer, text, 300)
    assert out["cond"].shape == ref.shape == (1, 300, 32)
    assert torch.equal(out["attention_mask"].to(mask.dtype), mask)
    real = mask[0].bool()
    assert (out["cond"][0, real] - ref[0, real]).abs().max() < 1e-5


def test_t5_fp16_storage_equals_transformers_on_the_rounded_weights(t5_files):
    """fp16 storage, float32 activations: transformers' T5 in fp32 holding the same fp16-rounded weights."""
    model, _, _, fp16 = t5_files
    clip = t5_encoder.load_t5_clip(fp16)
    assert clip.cond_stage_model.t5xxl.transformer.encoder.block[0].layer[0].SelfAttention.q.weight.dtype == torch.float16
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.half().float())
    from transformers import T5TokenizerFast

    text = "a red dog on the moon"
    out = clip.encode_from_tokens(clip.tokenize(text), return_dict=True)
    ref, mask = _reference_t5(rounded, T5TokenizerFast.from_pretrained(t5_encoder.BUNDLED_TOKENIZER), text, 300)
    real = mask[0].bool()
    error = (out["cond"][0, real] - ref[0, real]).abs().max().item()
    print(f"\nfp16-stored T5 vs transformers fp32 on the rounded weights: max abs {error:.1e}")
    assert error <= 1e-5


def test_t5_caption_length_and_truncation(t5_files, caplog):
    _, single, _, _ = t5_files
    clip = t5_encoder.load_t5_clip(single, caption_tokens=120)
    tokens = clip.tokenize("a big red dog " * 200)
    batch = tokens["t5xxl"][0]
    assert len(tokens["t5xxl"]) == 1 and len(batch) == 120 and batch[-1][0] == 1
    assert "over PixArt's 120-token limit" in caplog.text
    empty = clip.tokenize("")["t5xxl"][0]
    assert [t for t, _ in empty[:2]] == [1, 0] and len(empty) == 120


def test_dit_under_comfy_equals_core_reference(sigma_ckpt):
    patcher = model_loading.load_dit_patcher(sigma_ckpt.paths["original_pth"], "fp32")
    import comfy.model_management

    comfy.model_management.load_models_gpu([patcher])
    dit = patcher.model.diffusion_model
    assert type(dit).__name__ == "ComfyPixArtDiT"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 12, 20, generator=generator)
    context = torch.randn(2, 300, 32, generator=generator)
    mask = torch.zeros(2, 300)
    mask[0, :5] = 1
    mask[1, :77] = 1
    t = torch.tensor([999.0, 250.0])
    with torch.no_grad():
        ours = dit(x, t, context, attention_mask=mask, transformer_options={})
        ref = sigma_ckpt.model(x, encoder_hidden_states=context, timestep=t, encoder_attention_mask=mask,
                               return_dict=False)[0]
    assert ours.shape == (2, 4, 12, 20)
    assert (ours - ref[:, :4]).abs().max() <= 1e-5


def test_model_config_and_latent_format(sigma_ckpt, alpha_ckpt):
    sigma = model_loading.load_dit_patcher(sigma_ckpt.paths["diffusers_repo"])
    alpha = model_loading.load_dit_patcher(alpha_ckpt.paths["original_safetensors"])
    assert sigma.model.latent_format.scale_factor == 0.13025
    assert alpha.model.latent_format.scale_factor == 0.18215
    sampling = sigma.model.model_sampling
    from bench.fixtures.schedulers import train_sigmas

    assert torch.allclose(sampling.sigmas.double(), train_sigmas(), rtol=1e-5)


def _rounded(model, dtype):
    """A copy of a diffusers model whose weights are rounded through `dtype` and held in fp32."""
    rounded = copy.deepcopy(model)
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.to(dtype).float())
    return rounded


def _dit_inputs(tokens=300, lengths=(5, 77)):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 12, 20, generator=generator)
    context = torch.randn(2, tokens, 32, generator=generator)
    mask = torch.zeros(2, tokens)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
    return x, torch.tensor([999.0, 250.0]), context, mask


def test_fp8_weights_compute_what_the_rounded_weights_do(sigma_ckpt):
    """fp8 storage cast per layer by ComfyUI's ops: diffusers' transformer holding the same fp8-rounded weights."""
    import comfy.model_management

    patcher = model_loading.load_dit_patcher(sigma_ckpt.paths["original_safetensors"], "fp8_e4m3fn")
    comfy.model_management.load_models_gpu([patcher])
    dit = patcher.model.diffusion_model
    assert dit.blocks[0].attn.qkv.weight.dtype == torch.float8_e4m3fn
    x, t, context, mask = _dit_inputs()
    with torch.no_grad():
        ours = dit(x, t, context, attention_mask=mask, transformer_options={}).float()
        ref = _rounded(sigma_ckpt.model, torch.float8_e4m3fn)(
            x, encoder_hidden_states=context, timestep=t, encoder_attention_mask=mask, return_dict=False)[0][:, :4]
    error = ((ours - ref).abs().max() / ref.abs().max()).item()
    print(f"\nfp8 DiT vs diffusers on the fp8-rounded weights: max abs / max {error:.1e}")
    assert error <= 1e-5


def test_node_schemas():
    import asyncio

    nodes = asyncio.run(PixArtExtension().get_node_list())
    ids = {node.GET_SCHEMA().node_id for node in nodes}
    assert {"PixArtT5Loader", "PixArtDiTLoader", "PixArtTextEncode", "PixArtDiffusersLoader"} <= ids
    for node in nodes:
        schema = node.GET_SCHEMA()
        assert schema.category.startswith("PixArt/")
        for item in schema.inputs:
            assert item.tooltip, f"{schema.node_id}.{item.id} has no tooltip"


def test_lowvram_partial_load_gives_the_same_result(sigma_ckpt):
    """Weights streamed per layer by ComfyUI's casting ops (lowvram) compute exactly what a full load does."""
    import comfy.model_management

    full = model_loading.load_dit_patcher(sigma_ckpt.paths["original_safetensors"], "fp32")
    partial = model_loading.load_dit_patcher(sigma_ckpt.paths["original_safetensors"], "fp32")
    positive = [[torch.randn(1, 300, 32, generator=torch.Generator().manual_seed(1)),
                 {"attention_mask": torch.tensor([[1] * 9 + [0] * 291])}]]
    negative = [[torch.randn(1, 300, 32, generator=torch.Generator().manual_seed(2)),
                 {"attention_mask": torch.tensor([[1] + [0] * 299])}]]
    reference = sample_tiny(full, positive, negative)
    comfy.model_management.unload_all_models()
    budget = partial.model_size() // 4
    partial.patch_model(device_to=torch.device("cpu"), lowvram_model_memory=budget, load_weights=True)
    streamed = [m for m in partial.model.diffusion_model.modules() if getattr(m, "comfy_cast_weights", False)]
    assert streamed, "lowvram loading should leave some layers to be cast on the fly"
    assert torch.equal(sample_tiny(partial, positive, negative), reference)
    partial.unpatch_model()


def test_native_style_conditioning_without_mask(sigma_ckpt):
    """ComfyUI's own PixArt CLIP gives unpadded T5 tokens with no mask, cond and uncond of different lengths: each
    sampled step equals diffusers' transformer given those tokens unmasked, and sampling runs."""
    import comfy.model_management

    patcher = model_loading.load_dit_patcher(sigma_ckpt.paths["original_safetensors"], "fp32")
    comfy.model_management.load_models_gpu([patcher])
    x, t, _, _ = _dit_inputs()
    context = torch.randn(2, 9, 32, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ours = patcher.model.diffusion_model(x, t, context, transformer_options={})
        ref = sigma_ckpt.model(x, encoder_hidden_states=context, timestep=t, return_dict=False)[0][:, :4]
    assert (ours - ref).abs().max() <= 1e-5
    positive = [[torch.randn(1, 9, 32), {}]]
    negative = [[torch.randn(1, 1, 32), {}]]
    out = sample_tiny(patcher, positive, negative)
    assert out.shape == (1, 4, 12, 16) and torch.isfinite(out).all()


def test_attention_mask_reaches_the_dit(sigma_ckpt):
    """Changing the padded T5 positions changes nothing when the mask travels; it does without the mask."""
    patcher = model_loading.load_dit_patcher(sigma_ckpt.paths["original_safetensors"], "fp32")
    cond = torch.randn(1, 300, 32, generator=torch.Generator().manual_seed(3))
    noisy = cond.clone()
    noisy[:, 12:] += 3
    mask = {"attention_mask": torch.tensor([[1] * 12 + [0] * 288])}
    negative = [[torch.zeros(1, 300, 32), {"attention_mask": torch.tensor([[1] + [0] * 299])}]]
    a = sample_tiny(patcher, [[cond, dict(mask)]], negative)
    b = sample_tiny(patcher, [[noisy, dict(mask)]], negative)
    c = sample_tiny(patcher, [[noisy, {}]], negative)
    assert torch.allclose(a, b, atol=1e-5)
    assert (a - c).abs().max() > 1e-3


def test_tiled_decode_matches_untiled_without_seams():
    """ComfyUI's tiled decode (what PixArt VAE Decode uses for 2K/4K) against a whole decode.

    Measured at a 48x48 latent (384 px) cut into 3x3 overlapping tiles: a full-width SD VAE decode of a real
    2K latent takes ~10 minutes on a 2-core CPU. Tolerance: max 6/255, mean 2e-3 (the VAE's GroupNorm sees
    per-tile statistics; measured 4.7/255 and 1.4e-3), and the error on tile boundaries is no larger than
    inside tiles (no seams).
    """
    import comfy.sd

    from bench.fixtures.models import tiny_vae

    vae = comfy.sd.VAE(sd={k: v.contiguous() for k, v in tiny_vae().state_dict().items()})
    latent = torch.randn(1, 4, 48, 48, generator=torch.Generator().manual_seed(0))
    whole = vae.decode(latent)
    tiled = vae.decode_tiled(latent, tile_x=24, tile_y=24, overlap=6)
    error = (whole - tiled).abs()  # (1, 384, 384, 3)
    print(f"\ntiled vs whole decode: max {error.max():.4f} ({error.max() * 255:.1f}/255), mean {error.mean():.2e}")
    assert error.max() <= 6 / 255 and error.mean() <= 2e-3
    per_column = error.mean(dim=(0, 1, 3))  # (384,)
    assert per_column.max() <= 4 * per_column.median() + 2 / 255


WEIGHTED_PROMPTS = ["a photo of a cat riding the moon", "a (red:1.5) dog ((on)) the moon", r"a \(literal\) (bracket:0.5)",
                    "(nested (words:1.3) here) and (x:y)", "time (12:30) ) (after", "embedding:style, a dog"]


@pytest.mark.parametrize("text", WEIGHTED_PROMPTS)
def test_prompt_syntax_reads_as_comfyui_reads_it(text):
    """The engine's caption rules (what the nodes and the token route run) against ComfyUI's own parser and its own T5
    tokenizer class on the same vocabulary: same segments and weights, same (token, weight) sequence."""
    import comfy.sd1_clip as sd1
    import comfy.text_encoders.sd3_clip as sd3

    from pixart_sigma_nodes.pixart.caption import parse_weights

    expected = [(sd1.unescape_important(segment), weight)
                for segment, weight in sd1.token_weights(sd1.escape_important(text), 1.0)]
    assert parse_weights(text) == [(segment, pytest.approx(weight)) for segment, weight in expected]
    comfy_tokens = sd3.T5XXLTokenizer(min_length=1).tokenize_with_weights(text.lower())[0]
    comfy_tokens = [(token, weight) for token, weight in comfy_tokens[: [t for t, _ in comfy_tokens].index(1)]]
    ours = t5_encoder.caption_tokenizer().caption(text)
    assert [(token, pytest.approx(weight)) for token, weight, _ in ours.tokens[: ours.length - 1]] == comfy_tokens


def test_clip_tokenizes_with_the_engines_caption_tokenizer(t5_files):
    from pixart_sigma_nodes.pixart.caption import CaptionTokenizer

    _, single, _, _ = t5_files
    clip = t5_encoder.load_t5_clip(single, caption_tokens=120)
    tokenizer = clip.tokenizer.t5xxl
    assert isinstance(tokenizer, CaptionTokenizer) and tokenizer.caption_tokens == 120
    for text in WEIGHTED_PROMPTS:
        assert clip.tokenize(text)["t5xxl"] == tokenizer.tokenize_with_weights(text)
