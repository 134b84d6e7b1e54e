"""KV token compression: exactness when off, token counts, modes, trained conv, per-call switching."""
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn

from pixart_sigma_nodes.pixart import KVCompress, KVCompressError, load_dit, parse_layers
from pixart_sigma_nodes.pixart.attention import sdpa_attention
from pixart_sigma_nodes.pixart.kv_compress import compress_tokens, compressed_steps, default_layers, in_compressed_steps


def _inputs(height, width, tokens=300, seed=0):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 4, height, width, generator=generator)
    context = torch.randn(2, tokens, 32, generator=generator)
    mask = torch.ones(2, tokens)
    mask[1, 20:] = 0
    return x, torch.tensor([999.0, 10.0]), context, mask


class _RecordingAttention:
    def __init__(self):
        self.key_lengths = []

    def __call__(self, q, k, v, heads, mask=None):
        if mask is None:  # self-attention
            self.key_lengths.append(k.shape[1])
        return sdpa_attention(q, k, v, heads, mask)


@pytest.fixture(scope="module")
def model(sigma_ckpt):
    return load_dit(sigma_ckpt.paths["original_safetensors"])


def test_ratio_one_or_no_layers_is_exactly_off(model):
    x, t, context, mask = _inputs(14, 18)
    with torch.no_grad():
        off = model(x, t, context, mask)
        for setting in (KVCompress(1, frozenset({0, 1}), "avg"), KVCompress(2, frozenset(), "avg")):
            assert torch.equal(model(x, t, context, mask, kv_compress=setting), off)


@pytest.mark.parametrize("mode", ["avg", "nearest", "uniform"])
@pytest.mark.parametrize("ratio", [2, 3, 4])
@pytest.mark.parametrize("size", [(16, 16), (14, 22), (10, 6)], ids=str)
def test_key_value_length_is_ceil_grid(model, mode, ratio, size):
    x, t, context, mask = _inputs(*size)
    recorder = _RecordingAttention()
    setting = KVCompress(ratio, frozenset({1}), mode)
    with torch.no_grad():
        out = model(x, t, context, mask, kv_compress=setting, attention=recorder)
        off = model(x, t, context, mask)
    grid_h, grid_w = size[0] // 2, size[1] // 2
    full = grid_h * grid_w
    assert recorder.key_lengths == [full, -(-grid_h // ratio) * -(-grid_w // ratio)]
    assert out.shape == off.shape and torch.isfinite(out).all()
    assert (out - off).abs().max() > 1e-4  # compression does change the result


def test_switching_per_call_needs_no_rebuild(model):
    x, t, context, mask = _inputs(16, 16)
    with torch.no_grad():
        first = model(x, t, context, mask)
        model(x, t, context, mask, kv_compress=KVCompress(2, frozenset({0, 1}), "avg"))
        again = model(x, t, context, mask)
    assert torch.equal(first, again)


def _reference_avg(grid, ratio):
    """Mean of the tokens in each window, by explicit loops. (H, W, C) -> (H', W', C)."""
    height, width, _ = grid.shape
    rows = []
    for top in range(0, height, ratio):
        rows.append(torch.stack([grid[top:top + ratio, left:left + ratio].mean(dim=(0, 1))
                                 for left in range(0, width, ratio)]))
    return torch.stack(rows)


@pytest.mark.parametrize("size,ratio", [((4, 6), 2), ((5, 7), 2), ((7, 7), 3), ((3, 9), 4), ((1, 3), 4)])
def test_modes_against_explicit_reference(size, ratio):
    height, width = size
    grid = torch.randn(height, width, 5)
    tokens = grid.reshape(1, height * width, 5)
    avg = compress_tokens(tokens, size, ratio, "avg")
    assert torch.allclose(avg, _reference_avg(grid, ratio).reshape(1, -1, 5), atol=1e-6)
    for mode in ("uniform", "nearest"):  # the official 'uniform' and 'ave' both pick every s-th token
        assert torch.equal(compress_tokens(tokens, size, ratio, mode), grid[::ratio, ::ratio].reshape(1, -1, 5))


@pytest.mark.parametrize("ratio", [2, 3, 4])
def test_conv_with_averaging_weights_matches_avg_before_the_norm(ratio):
    channels = 6
    conv = nn.Conv2d(channels, channels, ratio, ratio, groups=channels)
    with torch.no_grad():
        conv.weight.fill_(1.0 / ratio**2)
        conv.bias.zero_()
    tokens = torch.randn(2, 12 * 24, channels)
    conv_out = compress_tokens(tokens, (12, 24), ratio, "conv", conv, nn.Identity())
    assert torch.allclose(conv_out, compress_tokens(tokens, (12, 24), ratio, "avg"), atol=1e-6)


def _with_trained_kv(sigma_ckpt, tmp_path, ratio=2, layers=(1,)):
    from bench.fixtures.models import original_layout

    sd = original_layout(sigma_ckpt.model, sigma_ckpt.null_caption)
    dim = sd["x_embedder.proj.weight"].shape[0]
    generator = torch.Generator().manual_seed(5)
    for i in layers:
        sd[f"blocks.{i}.attn.sr.weight"] = torch.randn(dim, 1, ratio, ratio, generator=generator) / ratio
        sd[f"blocks.{i}.attn.sr.bias"] = torch.randn(dim, generator=generator) * 0.1
        sd[f"blocks.{i}.attn.norm.weight"] = 1 + torch.randn(dim, generator=generator) * 0.1
        sd[f"blocks.{i}.attn.norm.bias"] = torch.randn(dim, generator=generator) * 0.1
    path = str(tmp_path / "kv-trained.safetensors")
    save_file(sd, path)
    return load_dit(path)


def test_trained_conv_compression(sigma_ckpt, tmp_path):
    model = _with_trained_kv(sigma_ckpt, tmp_path)
    assert model.config.kv_conv_layers == frozenset({1}) and model.config.kv_conv_ratio == 2
    x, t, context, mask = _inputs(13, 18)
    recorder = _RecordingAttention()
    with torch.no_grad():
        out = model(x, t, context, mask, kv_compress=KVCompress(2, frozenset({1}), "conv"), attention=recorder)
        off = model(x, t, context, mask)
    assert recorder.key_lengths == [7 * 9, 4 * 5]
    assert torch.isfinite(out).all() and (out - off).abs().max() > 1e-4
    with pytest.raises(KVCompressError, match="blocks \\[0\\] carry no trained"):
        model(x, t, context, mask, kv_compress=KVCompress(2, frozenset({0, 1}), "conv"))
    with pytest.raises(KVCompressError, match="set the ratio to 2"):
        model(x, t, context, mask, kv_compress=KVCompress(3, frozenset({1}), "conv"))


def test_conv_refused_without_trained_weights(model):
    x, t, context, mask = _inputs(8, 8)
    with pytest.raises(KVCompressError, match="needs a checkpoint trained"):
        model(x, t, context, mask, kv_compress=KVCompress(2, frozenset({1}), "conv"))


def test_layers_beyond_depth_are_refused(model):
    x, t, context, mask = _inputs(8, 8)
    with pytest.raises(KVCompressError, match="this model has 2 blocks"):
        model(x, t, context, mask, kv_compress=KVCompress(2, frozenset({5}), "avg"))


def test_parse_layers():
    assert parse_layers("", 28) == default_layers(28) == frozenset(range(14, 28))
    assert parse_layers("default", 42) == frozenset(range(21, 42))
    assert parse_layers("all", 4) == frozenset(range(4))
    assert parse_layers("0, 2,4-6", 28) == frozenset({0, 2, 4, 5, 6})
    assert parse_layers("14-27", 28) == frozenset(range(14, 28))
    for bad, fragment in (("1-x", "cannot read"), ("5-2", "runs backwards"), ("20-30", "0 to 27")):
        with pytest.raises(KVCompressError, match=fragment):
            parse_layers(bad, 28)


def test_bad_settings():
    with pytest.raises(KVCompressError, match="unknown"):
        KVCompress(2, frozenset({0}), "bilinear")
    with pytest.raises(KVCompressError, match="must be 1"):
        KVCompress(0, frozenset({0}), "avg")


@pytest.mark.parametrize("fraction, steps, expected", [
    (0.5, 10, 5), (0.3, 10, 3), (0.7, 10, 7), (0.05, 20, 1), (0.01, 5, 1), (0.5, 5, 3), (0.0, 10, 0), (1.0, 10, 10),
    (0.99, 20, 20)])
def test_kv_steps_counts_the_steps_run_rounded_up(fraction, steps, expected):
    assert compressed_steps(fraction, steps) == expected


def test_kv_steps_follow_the_run_not_the_schedule():
    """A call counts with the step it starts or lies inside (the intermediate calls of multistage samplers), against
    the noise levels of the steps actually run, whatever their spacing."""
    run = [14.6, 8.0, 4.1, 2.0, 0.9, 0.0]  # 5 steps
    assert [in_compressed_steps(level, run, 0.4) for level in run[:-1]] == [True, True, False, False, False]
    assert in_compressed_steps(5.5, run, 0.4)  # between the 2nd step's ends: inside a compressed step
    assert not in_compressed_steps(3.0, run, 0.4)
    assert not in_compressed_steps(4.1 * (1 + 1e-6), run, 0.4)  # the 3rd step's own start, up to float rounding
    assert all(in_compressed_steps(level, run, 1.0) for level in run)
    assert not any(in_compressed_steps(level, run, 0.0) for level in run)


# --- against the official AttentionKVCompress (PixArt-sigma diffusion/model/nets/PixArt_blocks.py) ----------------

OFFICIAL_MODE = {"nearest": "ave", "uniform": "uniform", "conv": "conv", "avg": "conv"}  # avg: conv at its averaging init


def _official_downsample(tokens, grid, ratio, sampling, conv=None, norm=None):
    """AttentionKVCompress.downsample_2d's semantics, written here from the official code's description: tokens laid
    out (B, C, H, W); 'ave' = F.interpolate(scale_factor=1/s, mode='nearest') (floor(H/s) x floor(W/s)); 'uniform' =
    [..., ::s, ::s] (ceil; the official code then reshapes to floor(H/s) * floor(W/s) tokens, which fails on sides not
    divisible by s); 'conv' = the depthwise conv (stride s, no padding: floor) then the LayerNorm. -> (B, h, w, C)"""
    batch, _, channels = tokens.shape
    image = tokens.reshape(batch, grid[0], grid[1], channels).permute(0, 3, 1, 2)
    if sampling == "ave":
        out = F.interpolate(image, scale_factor=1 / ratio, mode="nearest")
    elif sampling == "uniform":
        out = image[:, :, ::ratio, ::ratio]
    else:
        out = conv(image)
    out = out.permute(0, 2, 3, 1)
    return norm(out) if sampling == "conv" else out


def _official_attention(attention, x, grid, ratio, sampling, conv, norm):
    """AttentionKVCompress.forward on the same weights: q, k, v from qkv; keys and values downsampled; softmax attention
    per head (scale 1/sqrt(head dim)); proj. -> (B, N, D)"""
    batch, tokens, dim = x.shape
    heads = attention.heads
    q, k, v = attention.qkv(x).reshape(batch, tokens, 3, dim).unbind(2)
    k, v = (_official_downsample(t, grid, ratio, sampling, conv, norm).reshape(batch, -1, dim) for t in (k, v))
    q, k, v = (t.reshape(batch, -1, heads, dim // heads).transpose(1, 2) for t in (q, k, v))
    weights = (q @ k.transpose(-2, -1) / (dim // heads) ** 0.5).softmax(dim=-1)
    return attention.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, dim))


def _kv_layers(ratio, channels, generator, averaging):
    conv = nn.Conv2d(channels, channels, ratio, ratio, groups=channels)
    norm = nn.LayerNorm(channels)
    with torch.no_grad():
        if averaging:  # the official initialisation: weight 1/s^2, bias 0; avg is that conv without the LayerNorm
            conv.weight.fill_(1.0 / ratio**2)
            conv.bias.zero_()
        else:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) / ratio)
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=generator) * 0.1)
            norm.weight.copy_(1 + torch.randn(channels, generator=generator) * 0.1)
            norm.bias.copy_(torch.randn(channels, generator=generator) * 0.1)
    return conv, norm


@pytest.mark.parametrize("mode", ["avg", "nearest", "uniform", "conv"])
@pytest.mark.parametrize("ratio", [2, 3, 4])
def test_self_attention_equals_official_kv_compress_on_divisible_grids(mode, ratio):
    from pixart_sigma_nodes.pixart.blocks import SelfAttention

    generator = torch.Generator().manual_seed(ratio)
    dim, grid = 144, (2 * ratio, 3 * ratio)
    ours = SelfAttention(dim, 2, ratio if mode == "conv" else 0, False, nn)
    with torch.no_grad():
        for param in ours.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) / param.shape[-1] ** 0.5)
    conv, norm = (ours.sr, ours.norm) if mode == "conv" else _kv_layers(ratio, dim, generator, averaging=True)
    x = torch.randn(2, grid[0] * grid[1], dim, generator=generator)
    with torch.no_grad():
        out = ours(x, grid, sdpa_attention, KVCompress(ratio, frozenset({0}), mode))
        official = _official_attention(ours, x, grid, ratio, OFFICIAL_MODE[mode], conv,
                                       nn.Identity() if mode == "avg" else norm)
    assert (out - official).abs().max() <= 1e-5


@pytest.mark.parametrize("mode", ["avg", "nearest", "uniform", "conv"])
@pytest.mark.parametrize("ratio", [2, 3, 4])
@pytest.mark.parametrize("grid", [(7, 9), (5, 14), (13, 6)], ids=str)
def test_odd_grids_keep_the_official_tokens_plus_an_edge(mode, ratio, grid):
    """Sides not divisible by s: ceil(H/s) x ceil(W/s) tokens, of which the first floor(H/s) x floor(W/s) (uniform: all)
    are the official ones."""
    generator = torch.Generator().manual_seed(10 + ratio)
    channels = 8
    conv, norm = _kv_layers(ratio, channels, generator, averaging=mode == "avg")
    tokens = torch.randn(2, grid[0] * grid[1], channels, generator=generator)
    with torch.no_grad():
        ours = compress_tokens(tokens, grid, ratio, mode, conv, norm)
        official = _official_downsample(tokens, grid, ratio, OFFICIAL_MODE[mode], conv,
                                        nn.Identity() if mode == "avg" else norm)
    out_h, out_w = -(-grid[0] // ratio), -(-grid[1] // ratio)
    ours = ours.reshape(2, out_h, out_w, channels)
    kept_h, kept_w = official.shape[1:3]
    assert (kept_h, kept_w) == ((out_h, out_w) if mode == "uniform" else (grid[0] // ratio, grid[1] // ratio))
    assert (ours[:, :kept_h, :kept_w] - official).abs().max() <= 1e-6
