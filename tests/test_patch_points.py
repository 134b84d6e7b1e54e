"""The DiT's patch points (pixart.patches) against diffusers' transformer changed the same way by hand: a block
skipped, a self-attention output transformed, identity self-attention (PAG), a cross-attention replaced; and PAG's
layer choice against PixArtSigmaPAGPipeline's own."""
import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pixart_sigma_nodes.pixart import KVCompress, load_dit
from pixart_sigma_nodes.pixart.attention import sdpa_attention
from pixart_sigma_nodes.pixart.pag import PAGLayersError, describe_layers, identity_attention, pag_layers, pag_scale_at
from pixart_sigma_nodes.pixart.patches import AttentionPatch, BlockPatches

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model(sigma_ckpt):
    return load_dit(sigma_ckpt.paths["original_safetensors"])


def _inputs(seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, 12, 16, generator=generator)
    context = torch.randn(2, 300, 32, generator=generator)
    mask = torch.zeros(2, 300)
    mask[0, :9] = 1
    mask[1, :40] = 1
    return x, torch.tensor([999.0, 321.0]), context, mask


def _reference(transformer, x, t, context, mask):
    with torch.no_grad():
        return transformer(x, encoder_hidden_states=context, timestep=t, encoder_attention_mask=mask,
                           return_dict=False)[0]


class _SkippedBlock(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class _SelfAttention:
    """diffusers self-attention written out, with a function applied to its output before to_out."""

    def __init__(self, change=None, identity=False):
        self.change, self.identity = change, identity

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch, tokens, _ = hidden_states.shape
        value = attn.to_v(hidden_states)
        if self.identity:
            out = value
        else:
            q, k, v = (t.view(batch, tokens, attn.heads, -1).transpose(1, 2)
                       for t in (attn.to_q(hidden_states), attn.to_k(hidden_states), value))
            out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, -1)
        if self.change is not None:
            out = self.change(out)
        return attn.to_out[1](attn.to_out[0](out))


def _patched(index, patches):
    return lambda i: patches if i == index else None


def test_no_patches_is_exactly_the_model(model):
    x, t, context, mask = _inputs()
    with torch.no_grad():
        plain = model(x, t, context, mask)
        assert torch.equal(model(x, t, context, mask, block_patches=lambda i: None), plain)
        assert torch.equal(model(x, t, context, mask, block_patches=lambda i: BlockPatches()), plain)


@pytest.mark.parametrize("index", [0, 1])
def test_block_replace_skipping_a_block_equals_diffusers_without_it(model, sigma_ckpt, index):
    x, t, context, mask = _inputs()
    seen = []

    def skip(tokens, run, t_mod, caption):
        seen.append((tokens.shape, t_mod.shape, caption[0].shape))
        return tokens

    with torch.no_grad():
        ours = model(x, t, context, mask, block_patches=_patched(index, BlockPatches(replace=skip)))
    reference = copy.deepcopy(sigma_ckpt.model)
    reference.transformer_blocks[index] = _SkippedBlock()
    assert (ours - _reference(reference, x, t, context, mask)).abs().max() <= TOLERANCE
    assert seen == [(torch.Size([2, 48, 144]), torch.Size([2, 6 * 144]), torch.Size([2, 40, 144]))]


def test_block_replace_running_the_original_block_changes_nothing(model):
    x, t, context, mask = _inputs()
    with torch.no_grad():
        plain = model(x, t, context, mask)
        again = model(x, t, context, mask,
                      block_patches=lambda i: BlockPatches(replace=lambda tokens, run, t_mod, caption: run(tokens)))
    assert torch.equal(again, plain)


def test_self_attention_output_patch_equals_diffusers_with_the_output_changed(model, sigma_ckpt):
    x, t, context, mask = _inputs()

    def change(out):  # any function of the output: here one that mixes the batch rows, as NAG does
        return out * 1.5 - out.flip(0) * 0.5

    with torch.no_grad():
        ours = model(x, t, context, mask, block_patches=lambda i: BlockPatches(self_attention=AttentionPatch(
            after=(change,))))
    reference = copy.deepcopy(sigma_ckpt.model)
    for block in reference.transformer_blocks:
        block.attn1.set_processor(_SelfAttention(change))
    assert (ours - _reference(reference, x, t, context, mask)).abs().max() <= TOLERANCE
    assert (ours - _reference(sigma_ckpt.model, x, t, context, mask)).abs().max() > 1e-3


def test_identity_self_attention_equals_diffusers_identity(model, sigma_ckpt):
    """PAG's perturbation, as diffusers' PAGIdentitySelfAttnProcessor2_0 computes it (to_out(to_v(x)))."""
    x, t, context, mask = _inputs()
    with torch.no_grad():
        ours = model(x, t, context, mask,
                     block_patches=_patched(1, BlockPatches(self_attention=AttentionPatch(replace=identity_attention))))
    reference = copy.deepcopy(sigma_ckpt.model)
    reference.transformer_blocks[1].attn1.set_processor(_SelfAttention(identity=True))
    assert (ours - _reference(reference, x, t, context, mask)).abs().max() <= TOLERANCE


def test_self_attention_replace_gets_keys_before_compression(model):
    """A replaced self-attention replaces KV compression with it: it is handed the full-length keys and values."""
    x, t, context, mask = _inputs()
    lengths = []

    def replace(q, k, v, attention_mask):
        lengths.append((q.shape[1], k.shape[1], v.shape[1], attention_mask))
        return sdpa_attention(q, k, v, 2)

    setting = KVCompress(2, frozenset({0, 1}), "avg")
    with torch.no_grad():
        plain = model(x, t, context, mask)
        ours = model(x, t, context, mask, kv_compress=setting,
                     block_patches=lambda i: BlockPatches(self_attention=AttentionPatch(replace=replace)))
    assert lengths == [(48, 48, 48, None)] * 2
    assert (ours - plain).abs().max() <= TOLERANCE  # full attention computed by the replacement: as uncompressed


def test_cross_attention_replace_gets_the_caption_and_its_mask(model):
    x, t, context, mask = _inputs()
    calls = []

    def replace(q, k, v, bias):
        calls.append((k.shape, bias.shape))
        return sdpa_attention(q, k, v, 2, bias)

    with torch.no_grad():
        plain = model(x, t, context, mask)
        ours = model(x, t, context, mask,
                     block_patches=lambda i: BlockPatches(cross_attention=AttentionPatch(replace=replace)))
    assert calls == [(torch.Size([2, 40, 144]), torch.Size([2, 1, 1, 40]))] * 2
    assert torch.equal(ours, plain)


def test_block_attention_function_is_used(model):
    x, t, context, mask = _inputs()
    counted = []

    def attention(q, k, v, heads, mask=None):
        counted.append(mask is None)
        return sdpa_attention(q, k, v, heads, mask)

    with torch.no_grad():
        model(x, t, context, mask, block_patches=_patched(1, BlockPatches(attention=attention)))
    assert counted == [True, False]  # block 1's self- and cross-attention, nothing of block 0


@pytest.mark.parametrize("patterns", ["blocks.1", "blocks.14", "blocks.(0|2)", "blocks.1,blocks.3", "transformer_blocks.2"])
def test_pag_layers_are_diffusers_choice(patterns):
    """pag_applied_layers resolved by PixArtSigmaPAGPipeline itself on a 20-block transformer."""
    from diffusers import PixArtSigmaPAGPipeline, PixArtTransformer2DModel
    from diffusers.models.attention_processor import PAGCFGIdentitySelfAttnProcessor2_0

    from bench.fixtures.pipelines import latent_only_vae
    from bench.fixtures.schedulers import pixart_sigma_scheduler

    transformer = PixArtTransformer2DModel(num_attention_heads=1, attention_head_dim=8, in_channels=4, out_channels=8,
                                           num_layers=20, sample_size=8, cross_attention_dim=8, caption_channels=8,
                                           norm_type="ada_norm_single", norm_num_groups=1)
    pipeline = PixArtSigmaPAGPipeline(tokenizer=None, text_encoder=None, vae=latent_only_vae(),
                                      transformer=transformer, scheduler=pixart_sigma_scheduler(),
                                      pag_applied_layers=patterns.split(","))
    pipeline._set_pag_attn_processor(pipeline.pag_applied_layers, do_classifier_free_guidance=True)
    chosen = sorted(int(name.split(".")[1]) for name, processor in transformer.attn_processors.items()
                    if isinstance(processor, PAGCFGIdentitySelfAttnProcessor2_0))
    assert pag_layers(patterns, 20) == chosen


def test_pag_default_layers_follow_diffusers_quirk():
    assert pag_layers("blocks.1", 28) == [1, *range(10, 20)]
    assert describe_layers(pag_layers("blocks.1", 28)) == "1, 10-19"
    assert pag_layers("blocks.1", 4) == [1]


@pytest.mark.parametrize("bad", ["", "blocks.99", "blocks.(1"])
def test_pag_layers_refused_with_the_pattern_named(bad):
    with pytest.raises(PAGLayersError) as error:
        pag_layers(bad, 28)
    assert (bad or "name at least one layer") in str(error.value)


def test_pag_adaptive_scale_is_diffusers_rule():
    assert pag_scale_at(999, 3.0, 0.0) == 3.0
    assert pag_scale_at(999, 3.0, 0.01) == pytest.approx(2.99)
    assert pag_scale_at(500, 3.0, 0.004) == pytest.approx(1.0)
    assert pag_scale_at(100, 3.0, 0.004) == 0.0  # never below zero
