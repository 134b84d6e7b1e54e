"""Host tier, in-process: core's model-patching nodes between the PixArt DiT loader and core KSampler's sampling
(nodes.common_ksampler) act on PixArt as on core's own DiTs, each equal to a reference this test computes itself:
the same sampler and sigmas driven by a guider whose predictions come from diffusers' transformer on the same weights,
changed by hand the way the node's idea says (SkipLayerGuidance: a block skipped; NAG: the self-attention outputs
extrapolated; EasyCache: skipped steps reuse the cached output change). LazyCache and APG, which work around the
model, still work; the attention override reaches every attention; UNet input patches are refused by name."""
import copy
import importlib
import logging
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.fixtures.pack import import_comfy
from host.comfy_host import require_comfyui

COMFYUI = require_comfyui()
import_comfy(COMFYUI)

import comfy.sample  # noqa: E402
import comfy.samplers  # noqa: E402

comfy_nodes = importlib.import_module("nodes")  # ComfyUI's core nodes module
STEPS, CFG, SEED = 8, 4.5, 7


def _core_node(module: str, name: str):
    try:
        return getattr(importlib.import_module(f"comfy_extras.{module}"), name)
    except (ImportError, AttributeError):
        pytest.skip(f"this ComfyUI has no {name} node (comfy_extras.{module})")


def _latent():
    return torch.zeros(1, 4, 12, 16)


def _ksampler(patched, conds, seed=SEED, sampler="dpmpp_2m"):
    """What core KSampler runs."""
    positive, negative = conds
    return comfy_nodes.common_ksampler(patched, seed, STEPS, CFG, sampler, "normal", positive, negative,
                                       {"samples": _latent()})[0]["samples"]


class ReferenceGuider(comfy.samplers.CFGGuider):
    """Core's guider with the prediction replaced: `predict(x, sigma, guider)` -> denoised, from the reference model."""

    def __init__(self, patcher, predict):
        super().__init__(patcher)
        self.predict = predict

    def predict_noise(self, x, timestep, model_options={}, seed=None):  # noqa: B006 (core's signature)
        return self.predict(x, timestep, self)


def _reference_sample(patcher, conds, predict, seed=SEED):
    """Core's sampler and sigmas (as KSampler dpmpp_2m / normal picks them), the reference's predictions."""
    guider = ReferenceGuider(patcher, predict)
    guider.set_conds(*conds)
    guider.set_cfg(CFG)
    sigmas = comfy.samplers.calculate_sigmas(patcher.get_model_object("model_sampling"), "normal", STEPS)
    noise = comfy.sample.prepare_noise(_latent(), seed)
    return guider.sample(noise, _latent(), comfy.samplers.sampler_object("dpmpp_2m"), sigmas, seed=seed,
                         disable_pbar=True)


class Reference:
    """diffusers' transformer on the same weights, as ComfyUI's BaseModel feeds its network: xc = x / sqrt(1 +
    sigma^2), t = the model's timestep of sigma, denoised = x - sigma * eps. Rows: [positive, negative]."""

    def __init__(self, transformer, patcher, conds):
        self.transformer = transformer
        self.sampling = patcher.get_model_object("model_sampling")
        self.context = torch.cat([conds[0][0][0], conds[1][0][0]])  # (2, 300, 32)
        self.mask = torch.cat([conds[0][0][1]["attention_mask"], conds[1][0][1]["attention_mask"]])

    def model_input(self, x, sigma):
        return self.sampling.calculate_input(sigma, x), self.sampling.timestep(sigma).float()

    def eps(self, xc, t, transformer=None, rows=(0, 1)):
        """epsilon (len(rows), 4, h, w) for the caption rows `rows`, xc: (1, 4, h, w) or one per row."""
        rows = list(rows)
        with torch.no_grad():
            out = (transformer or self.transformer)(
                xc.expand(len(rows), -1, -1, -1), encoder_hidden_states=self.context[rows],
                timestep=t.expand(len(rows)), encoder_attention_mask=self.mask[rows], return_dict=False)[0]
        return out[:, :4]

    def cfg(self, x, sigma, eps_pos, eps_neg):
        """(cfg result, positive) as denoised."""
        pos, neg = x - eps_pos * sigma, x - eps_neg * sigma
        return neg + (pos - neg) * CFG, pos


def _close(a, b, rtol=1e-5):
    return (a - b).abs().max().item() <= rtol * b.abs().max().item()


def _changes(a, b):
    return (a - b).abs().max().item() > 1e-3 * b.abs().max().item()


class _Skipped(nn.Module):
    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def _without_block(transformer, index):
    skipped = copy.deepcopy(transformer)
    skipped.transformer_blocks[index] = _Skipped()
    return skipped


@pytest.mark.parametrize("layer", [0, 1])
def test_skip_layer_guidance_dit_equals_cfg_plus_skipped_block_difference(pixart_model, tiny_conds, sigma_ckpt, layer):
    node = _core_node("nodes_slg", "SkipLayerGuidanceDiT")
    scale = 2.0
    patched = node.execute(model=pixart_model, scale=scale, start_percent=0.0, end_percent=1.0, double_layers=str(layer),
                           single_layers="", rescaling_scale=0.0)[0]
    ours = _ksampler(patched, tiny_conds)
    reference = Reference(sigma_ckpt.model, pixart_model, tiny_conds)
    skipped = _without_block(sigma_ckpt.model, layer)

    def predict(x, sigma, guider):
        xc, t = reference.model_input(x, sigma)
        eps = reference.eps(xc, t)
        result, positive = reference.cfg(x, sigma, eps[:1], eps[1:])
        skip = x - reference.eps(xc, t, skipped, rows=[0]) * sigma
        return result + (positive - skip) * scale

    assert _close(ours, _reference_sample(pixart_model, tiny_conds, predict))
    assert _changes(ours, _ksampler(pixart_model, tiny_conds))


def test_skip_layer_guidance_dit_simple_equals_uncond_with_the_block_skipped(pixart_model, tiny_conds, sigma_ckpt):
    node = _core_node("nodes_slg", "SkipLayerGuidanceDiTSimple")
    patched = node.execute(model=pixart_model, start_percent=0.0, end_percent=1.0, double_layers="1", single_layers="")[0]
    ours = _ksampler(patched, tiny_conds)
    reference = Reference(sigma_ckpt.model, pixart_model, tiny_conds)
    skipped = _without_block(sigma_ckpt.model, 1)

    def predict(x, sigma, guider):
        xc, t = reference.model_input(x, sigma)
        eps_pos = reference.eps(xc, t, rows=[0])
        eps_neg = reference.eps(xc, t, skipped, rows=[1])
        return reference.cfg(x, sigma, eps_pos, eps_neg)[0]

    assert _close(ours, _reference_sample(pixart_model, tiny_conds, predict))
    assert _changes(ours, _ksampler(pixart_model, tiny_conds))


class _NAGSelfAttention:
    """diffusers self-attention with NAG applied to its output before to_out, as core's NAGuidance defines it on
    [positive, negative] rows: extrapolate, cap the L1 norm ratio at tau, blend with alpha."""

    def __init__(self, scale, alpha, tau):
        self.scale, self.alpha, self.tau = scale, alpha, tau

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        batch, tokens, _ = hidden_states.shape
        q, k, v = (t.view(batch, tokens, attn.heads, -1).transpose(1, 2)
                   for t in (attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)))
        out = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(batch, tokens, -1)
        positive, negative = out[:1], out[1:]
        guided = positive * self.scale - negative * (self.scale - 1)
        norm_positive = positive.abs().sum(-1, keepdim=True).clamp_min(1e-6)
        norm_guided = guided.abs().sum(-1, keepdim=True).clamp_min(1e-6)
        ratio = norm_guided / norm_positive
        guided = guided * torch.minimum(ratio, torch.full_like(ratio, self.tau)) / ratio
        out = torch.cat([guided * self.alpha + positive * (1 - self.alpha), negative])
        return attn.to_out[1](attn.to_out[0](out))


def test_normalized_attention_guidance_equals_nag_on_the_self_attention(pixart_model, tiny_conds, sigma_ckpt):
    node = _core_node("nodes_nag", "NAGuidance")
    scale, alpha, tau = 5.0, 0.5, 1.5
    ours = _ksampler(node.execute(model=pixart_model, nag_scale=scale, nag_alpha=alpha, nag_tau=tau)[0], tiny_conds)
    nag = copy.deepcopy(sigma_ckpt.model)
    for block in nag.transformer_blocks:
        block.attn1.set_processor(_NAGSelfAttention(scale, alpha, tau))
    reference = Reference(nag, pixart_model, tiny_conds)

    def predict(x, sigma, guider):
        xc, t = reference.model_input(x, sigma)
        eps = reference.eps(xc, t)  # both rows in one call: NAG mixes them
        return reference.cfg(x, sigma, eps[:1], eps[1:])[0]

    assert _close(ours, _reference_sample(pixart_model, tiny_conds, predict))
    assert _changes(ours, _ksampler(pixart_model, tiny_conds))


def _batch_order(model, conds):
    """Which conds core batches into a model call, in order (0 positive, 1 negative), read in one step."""
    import comfy.patcher_extension

    seen = []

    def record(executor, *args, **kwargs):
        seen.append(list(args[-1]["cond_or_uncond"]))
        return executor(*args, **kwargs)

    probe = model.clone()
    probe.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "probe", record)
    comfy_nodes.common_ksampler(probe, SEED, 1, CFG, "euler", "normal", *conds, {"samples": _latent()})
    assert sorted(seen[0]) == [0, 1], seen
    return seen[0]


class EasyCacheRule:
    """EasyCache (Zhou et al. 2025) as core's node defines it, on each model call ([positive, negative] rows): the
    input change of the first cond's rows (latent subsampled 8x) times the last measured ratio of output change to input
    change, relative to the last output's mean magnitude, accumulates; below the threshold the call is skipped and
    returns its input plus each row's cached output change. Hosts whose EasyCache adds every cond's cached change to
    the whole batch (ComfyUI 0.3.64) get that. The first cond is the one core batches first (first_row of [positive,
    negative])."""

    def __init__(self, threshold, per_row, first_row):
        self.threshold, self.per_row, self.first = threshold, per_row, slice(first_row, first_row + 1)
        self.x_prev = self.out_prev = self.out_norm = self.rate = None
        self.cumulative, self.diff, self.skipped = 0.0, None, 0

    def __call__(self, xc, compute):
        sample = xc[self.first, ..., ::8, ::8]
        change = None
        if self.x_prev is not None:
            change = (sample - self.x_prev).flatten().abs().mean()
        if self.out_norm is not None and self.rate is not None:
            self.cumulative += self.rate * change / self.out_norm
            if self.cumulative < self.threshold:
                self.skipped += 1
                return xc + (self.diff if self.per_row else self.diff.sum(0, keepdim=True))
            self.cumulative = 0.0
        out = compute(xc)
        if self.out_norm is not None and change is not None:
            self.rate = (out[self.first, ..., ::8, ::8] - self.out_prev).flatten().abs().mean() / change
        self.diff = out - xc
        self.x_prev, self.out_prev, self.out_norm = sample, out[self.first, ..., ::8, ::8], out.flatten().abs().mean()
        return out


def test_easycache_skips_steps_reusing_the_cached_change(pixart_model, tiny_conds, sigma_ckpt, caplog):
    node = _core_node("nodes_easycache", "EasyCacheNode")
    holder = _core_node("nodes_easycache", "EasyCacheHolder")
    threshold = 0.5
    with caplog.at_level(logging.INFO):
        ours = _ksampler(node.execute(model=pixart_model, reuse_threshold=threshold, start_percent=0.0, end_percent=1.0,
                                      verbose=False)[0], tiny_conds)
    logged = re.findall(r"EasyCache - skipped (\d+)/(\d+) steps", caplog.text)
    reference = Reference(sigma_ckpt.model, pixart_model, tiny_conds)
    rule = EasyCacheRule(threshold, per_row=hasattr(holder, "can_apply_cache_diff"),
                         first_row=_batch_order(pixart_model, tiny_conds)[0])

    def predict(x, sigma, guider):
        xc, t = reference.model_input(x.expand(2, -1, -1, -1), sigma)
        eps = rule(xc.clone(), lambda batch: reference.eps(batch, t))
        return reference.cfg(x, sigma, eps[:1], eps[1:])[0]

    expected = _reference_sample(pixart_model, tiny_conds, predict)
    print(f"\nEasyCache on PixArt: skipped {logged[-1][0]}/{logged[-1][1]} steps (reference {rule.skipped})")
    assert logged and int(logged[-1][0]) == rule.skipped > 0
    assert _close(ours, expected)
    assert _changes(ours, _ksampler(pixart_model, tiny_conds))


def test_lazycache_and_apg_still_work(pixart_model, tiny_conds, caplog):
    plain = _ksampler(pixart_model, tiny_conds)
    lazy = _core_node("nodes_easycache", "LazyCacheNode")
    with caplog.at_level(logging.INFO):
        cached = _ksampler(lazy.execute(model=pixart_model, reuse_threshold=0.5, start_percent=0.0, end_percent=1.0,
                                        verbose=False)[0], tiny_conds)
    skipped = re.findall(r"LazyCache - skipped (\d+)/", caplog.text)
    assert skipped and int(skipped[-1]) > 0 and _changes(cached, plain)
    apg = _core_node("nodes_apg", "APG")
    guided = apg.execute(model=pixart_model, eta=0.0, norm_threshold=5.0, momentum=-0.5)[0]
    assert _changes(_ksampler(guided, tiny_conds), plain)


def test_attention_override_reaches_every_attention(pixart_model, tiny_conds):
    calls = []

    def override(function, *args, **kwargs):
        calls.append(kwargs["transformer_options"].get("block_index"))
        return function(*args, **kwargs)

    patched = pixart_model.clone()
    patched.model_options["transformer_options"]["optimized_attention_override"] = override
    assert torch.equal(_ksampler(patched, tiny_conds), _ksampler(pixart_model, tiny_conds))
    depth = pixart_model.model.diffusion_model.config.depth
    assert calls[: 2 * depth] == [i for i in range(depth) for _ in (0, 1)] and len(calls) == 2 * depth * STEPS


def test_unet_input_patches_are_refused_by_name(pixart_model, tiny_conds):
    hypertile = _core_node("nodes_hypertile", "HyperTile")
    patched = hypertile.execute(model=pixart_model, tile_size=256, swap_size=2, max_depth=0, scale_depth=False)[0]
    with pytest.raises(ValueError, match="attn1_patch .*HyperTile"):
        _ksampler(patched, tiny_conds)
