"""KV token compression: exactness when off, token counts, modes, trained conv, per-call switching."""
import pytest
import torch
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
    uniform = compress_tokens(tokens, size, ratio, "uniform")
    assert torch.equal(uniform, grid[::ratio, ::ratio].reshape(1, -1, 5))
    nearest = compress_tokens(tokens, size, ratio, "nearest")
    out_h, out_w = -(-height // ratio), -(-width // ratio)
    rows = [int(i * height / out_h) for i in range(out_h)]
    cols = [int(j * width / out_w) for j in range(out_w)]
    assert torch.equal(nearest, grid[rows][:, cols].reshape(1, -1, 5))


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
