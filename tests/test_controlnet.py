"""Our PixArt ControlNet (pixart.controlnet, run inside PixArtDiT.forward) against a reference controlled forward built
from diffusers' own PixArtTransformer2DModel modules (bench.fixtures.controlnet.reference_forward), same random weights,
every parameter randomised including the zero-initialised projections: control residuals and the controlled output
within 1e-5 (fp32), batch 2 with caption masks, at the trained size and non-square sizes; every checkpoint layout; bad
input.

diffusers 0.42.1 does not ship PixArtControlNetAdapterModel (only its examples/research_projects/pixart has it), so
there is no packaged adapter to compare with; test_diffusers_does_not_ship_the_adapter notices when that changes.
The comparison with the official ControlPixArtHalf itself is tests/test_controlnet_official.py (needs a checkout).
"""
import pytest
import torch

from bench.fixtures.controlnet import (
    base_original,
    official_layout,
    reference_forward,
    save_controlnet_files,
    tiny_controlnet,
)
from pixart_sigma_nodes.pixart.checkpoint import CheckpointError, load_dit
from pixart_sigma_nodes.pixart.checkpoint.controlnet import (
    DIFFUSERS_ADAPTER,
    OFFICIAL,
    load_controlnet,
    read_controlnet_weights,
)
from pixart_sigma_nodes.pixart.config import ALPHA
from pixart_sigma_nodes.pixart.controlnet import ControlInput
from pixart_sigma_nodes.pixart.kv_compress import KVCompress

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def control(tmp_path_factory):
    net = tiny_controlnet()
    folder = tmp_path_factory.mktemp("controlnet")
    paths = save_controlnet_files(net, str(folder))
    from safetensors.torch import save_file

    paths["base"] = str(folder / "PixArt-XL-2-1024-MS-tiny.safetensors")
    save_file(base_original(net), paths["base"])
    return net, paths


def _inputs(height, width, lengths=(9, 120), seed=3):
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    x = torch.randn(batch, 4, height, width, generator=generator)
    hint = torch.randn(batch, 4, height, width, generator=generator)
    t = torch.tensor([981.0, 317.0][:batch])
    context = torch.randn(batch, 120, 32, generator=generator)
    mask = torch.zeros(batch, 120)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return x, t, context, mask, hint


def _ours(dit, net, x, t, context, mask, hint, strength=1.0, residuals=None, **kwargs):
    hooks = []
    if residuals is not None:
        hooks = [block.after_proj.register_forward_hook(lambda module, args, out: residuals.append(out))
                 for block in net.controlnet]
    try:
        with torch.no_grad():
            return dit(x, t, context, mask, control=[ControlInput(net, hint, strength)], **kwargs)
    finally:
        for hook in hooks:
            hook.remove()


def test_diffusers_does_not_ship_the_adapter():
    """If a diffusers release ships PixArtControlNetAdapterModel, compare with it here instead of the assembled reference."""
    import diffusers

    assert not hasattr(diffusers, "PixArtControlNetAdapterModel"), \
        f"diffusers {diffusers.__version__} ships PixArtControlNetAdapterModel: add a direct comparison with it"


@pytest.mark.parametrize("size", [(128, 128), (12, 20), (22, 14)], ids=str)
@pytest.mark.parametrize("layout", ["official_pth", "adapter"])
def test_controlled_forward_equals_the_reference(control, size, layout):
    net, paths = control
    dit = load_dit(paths["base"])
    ours_net = load_controlnet(paths[layout])
    assert dit.config.family == ALPHA and dit.config.sample_size == 128  # trained size 1024 px: 128 x 128 latents
    x, t, context, mask, hint = _inputs(*size)
    ours_residuals, ref_residuals = [], []
    ours = _ours(dit, ours_net, x, t, context, mask, hint, residuals=ours_residuals)
    ref = reference_forward(net, x, t, context, mask, hint, residuals=ref_residuals)
    assert len(ours_residuals) == len(ref_residuals) == net.depth
    for a, b in zip(ours_residuals, ref_residuals):
        assert (a - b).abs().max().item() <= TOLERANCE
    error = (ours - ref).abs().max().item()
    print(f"\n{layout} {size}: controlled output max abs error {error:.1e}, "
          f"residual errors {[f'{(a - b).abs().max().item():.1e}' for a, b in zip(ours_residuals, ref_residuals)]}")
    assert ours.shape == ref.shape == (2, 8, *size)
    assert error <= TOLERANCE
    plain = reference_forward(net, x, t, context, mask, None)
    assert (ref - plain).abs().max() > 1e-3  # the control changes the output: the comparison is not vacuous
    h, w = size[0] * 8.0, size[1] * 8.0
    with torch.no_grad():  # without a hint the reference loop is diffusers' own transformer forward
        diffusers_out = net.base(x, encoder_hidden_states=context, timestep=t, encoder_attention_mask=mask,
                                 added_cond_kwargs={"resolution": torch.tensor([[h, w]] * 2),
                                                    "aspect_ratio": torch.tensor([[h / w]] * 2)}, return_dict=False)[0]
    assert (plain - diffusers_out).abs().max().item() <= TOLERANCE


def test_strength_scales_the_residuals(control):
    net, paths = control
    dit, ours_net = load_dit(paths["base"]), load_controlnet(paths["official_no_base"])
    x, t, context, mask, hint = _inputs(16, 16)
    half = _ours(dit, ours_net, x, t, context, mask, hint, strength=0.5)
    assert (half - reference_forward(net, x, t, context, mask, hint, strength=0.5)).abs().max() <= TOLERANCE
    zero = _ours(dit, ours_net, x, t, context, mask, hint, strength=0.0)
    with torch.no_grad():
        assert torch.equal(zero, dit(x, t, context, mask))


def test_the_mask_hides_padding_from_the_copied_blocks(control):
    net, paths = control
    dit, ours_net = load_dit(paths["base"]), load_controlnet(paths["official_pth"])
    x, t, context, mask, hint = _inputs(16, 16)
    noisy = context.clone()
    noisy[mask == 0] = torch.randn_like(noisy[mask == 0]) * 5
    a = _ours(dit, ours_net, x, t, context, mask, hint)
    b = _ours(dit, ours_net, x, t, noisy, mask, hint)
    assert (a - b).abs().max() <= 1e-6


def test_kv_compression_reaches_the_copied_blocks(control):
    """A copied block compresses its K/V where the base block of the same index does (layer 1 here)."""
    net, paths = control
    dit, ours_net = load_dit(paths["base"]), load_controlnet(paths["official_pth"])
    x, t, context, mask, hint = _inputs(16, 16)
    kv = KVCompress(2, frozenset({1}), "avg")
    compressed = _ours(dit, ours_net, x, t, context, mask, hint, kv_compress=kv)
    residuals = []
    _ours(dit, ours_net, x, t, context, mask, hint, kv_compress=kv, residuals=residuals)
    plain = []
    _ours(dit, ours_net, x, t, context, mask, hint, residuals=plain)
    assert torch.equal(residuals[0], plain[0])  # copy 0 is not compressed
    assert (residuals[1] - plain[1]).abs().max() > 1e-4  # copy 1 is
    assert compressed.shape == (2, 8, 16, 16)


def test_layouts_are_detected(control):
    _, paths = control
    with_base = read_controlnet_weights(paths["official_pth"])
    assert with_base.layout == OFFICIAL and with_base.config.depth == 3 and with_base.config.num_heads == 2
    assert with_base.config.base is not None and with_base.config.base.family == ALPHA
    assert not any(k.startswith("base_model.") for k in with_base.state_dict)
    assert read_controlnet_weights(paths["official_no_base"]).config.base is None
    assert read_controlnet_weights(paths["adapter"]).layout == DIFFUSERS_ADAPTER
    same = [read_controlnet_weights(paths[name]).state_dict for name in ("official_pth", "official_no_base", "adapter")]
    assert same[0].keys() == same[1].keys() == same[2].keys()
    assert all(torch.equal(same[0][k], other[k]) for other in same[1:] for k in same[0])


def test_the_dit_loader_reads_the_base_from_the_controlnet_file(control):
    """The published ControlNet .pth carries its frozen base: the PixArt DiT Loader loads it from that file."""
    net, paths = control
    from_control = load_dit(paths["official_pth"])
    alone = load_dit(paths["base"])
    assert all(torch.equal(a, b) for a, b in zip(from_control.state_dict().values(), alone.state_dict().values()))


def test_an_sd15_controlnet_is_named(control):
    _, paths = control
    with pytest.raises(CheckpointError, match="control_v11p_sd15_canny-tiny.safetensors is not a PixArt ControlNet: "
                                              "it looks like a ControlNet for Stable Diffusion"):
        read_controlnet_weights(paths["sd15"])


def test_a_dit_and_other_files_are_named(control, tmp_path):
    _, paths = control
    with pytest.raises(CheckpointError, match="is a PixArt DiT without ControlNet blocks.*PixArt DiT Loader"):
        read_controlnet_weights(paths["base"])
    from safetensors.torch import save_file

    unknown = str(tmp_path / "vae.safetensors")
    save_file({"decoder.conv_in.weight": torch.zeros(2, 2)}, unknown)
    with pytest.raises(CheckpointError, match="vae.safetensors is not a PixArt ControlNet: it looks like a VAE"):
        read_controlnet_weights(unknown)


def test_unused_weights_are_an_error(control, tmp_path):
    net, _ = control
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in official_layout(net, with_base=False).items()}
    sd["controlnet.1.before_proj.weight"] = sd["controlnet.0.before_proj.weight"].clone()
    path = str(tmp_path / "extra.safetensors")
    save_file(sd, path)
    with pytest.raises(CheckpointError, match="extra.safetensors: weights do not fit.*controlnet.1.before_proj"):
        load_controlnet(path)
    sd.pop("controlnet.1.before_proj.weight")
    sd["something.else"] = torch.zeros(1)
    save_file(sd, path)
    with pytest.raises(CheckpointError, match="belong to neither the ControlNet nor its base.*something.else"):
        read_controlnet_weights(path)


def test_a_controlnet_for_another_width_is_refused(control, sigma_ckpt):
    _, paths = control
    dit = load_dit(sigma_ckpt.paths["original_safetensors"])  # 2 blocks: too shallow for 3 copied blocks
    x, t, _, _, hint = _inputs(16, 16)
    context, mask = torch.randn(2, 300, 32), torch.ones(2, 300)
    with pytest.raises(ValueError, match="does not fit the model: 3 copied blocks need a model of more blocks"):
        _ours(dit, load_controlnet(paths["official_pth"]), x, t, context, mask, hint)
