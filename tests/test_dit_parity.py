"""Our DiT equals diffusers' PixArtTransformer2DModel on the same random weights (fp32, <= 1e-5 max abs)."""
import pytest
import torch

from pixart_sigma_nodes.pixart import load_dit
from pixart_sigma_nodes.pixart.config import ALPHA, SIGMA

TOLERANCE = 1e-5


def _inputs(ckpt, height, width, lengths=(7, 50), seed=0):
    generator = torch.Generator().manual_seed(seed)
    batch = len(lengths)
    x = torch.randn(batch, 4, height, width, generator=generator)
    t = torch.tensor([999.0, 421.0][:batch])
    context = torch.randn(batch, ckpt.tokens, 32, generator=generator)
    mask = torch.zeros(batch, ckpt.tokens)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return x, t, context, mask


def _reference(ckpt, x, t, context, mask, micro=False):
    extra = {}
    if micro:
        h, w = x.shape[-2] * 8.0, x.shape[-1] * 8.0
        extra["added_cond_kwargs"] = {"resolution": torch.tensor([[h, w]] * x.shape[0]),
                                      "aspect_ratio": torch.tensor([[h / w]] * x.shape[0])}
    with torch.no_grad():
        return ckpt.model(x, encoder_hidden_states=context, timestep=t, encoder_attention_mask=mask,
                          return_dict=False, **extra)[0]


@pytest.mark.parametrize("size", [(16, 16), (12, 20), (22, 14), (32, 32)], ids=str)
def test_sigma_matches_diffusers(sigma_ckpt, size):
    model = load_dit(sigma_ckpt.paths["original_safetensors"])
    assert model.config.family == SIGMA and model.config.pe_interpolation == 2.0
    x, t, context, mask = _inputs(sigma_ckpt, *size)
    with torch.no_grad():
        ours = model(x, t, context, mask)
    ref = _reference(sigma_ckpt, x, t, context, mask)
    assert ours.shape == ref.shape == (2, 8, *size)
    assert (ours - ref).abs().max().item() <= TOLERANCE


def test_sigma_matches_at_trained_size(sigma_ckpt):
    model = load_dit(sigma_ckpt.paths["original_pth"])
    x, t, context, mask = _inputs(sigma_ckpt, 128, 128, lengths=(300, 1))
    with torch.no_grad():
        ours = model(x, t, context, mask)
    assert (ours - _reference(sigma_ckpt, x, t, context, mask)).abs().max().item() <= TOLERANCE


@pytest.mark.parametrize("size", [(16, 16), (12, 20)], ids=str)
def test_alpha_micro_conditions_match_diffusers(alpha_ckpt, size):
    model = load_dit(alpha_ckpt.paths["original_pth"])
    assert model.config.family == ALPHA and model.config.micro_conditions
    x, t, context, mask = _inputs(alpha_ckpt, *size, lengths=(3, 120))
    with torch.no_grad():
        ours = model(x, t, context, mask)  # c_size / c_ar default to the latent's pixel size
        explicit = model(x, t, context, mask, c_size=torch.tensor([[size[0] * 8.0, size[1] * 8.0]] * 2))
    ref = _reference(alpha_ckpt, x, t, context, mask, micro=True)
    assert (ours - ref).abs().max().item() <= TOLERANCE
    assert torch.equal(ours, explicit)


def test_micro_conditions_change_the_output(alpha_ckpt):
    model = load_dit(alpha_ckpt.paths["original_safetensors"])
    x, t, context, mask = _inputs(alpha_ckpt, 16, 16)
    with torch.no_grad():
        a = model(x, t, context, mask)
        b = model(x, t, context, mask, c_size=torch.tensor([[1024.0, 1024.0]] * 2))
    assert (a - b).abs().max() > 1e-3


def test_mask_hides_padding(sigma_ckpt):
    """Changing what sits in masked positions changes nothing; unmasking it does."""
    model = load_dit(sigma_ckpt.paths["original_safetensors"])
    x, t, context, mask = _inputs(sigma_ckpt, 16, 16)
    noisy = context.clone()
    noisy[mask == 0] = torch.randn_like(noisy[mask == 0]) * 5
    with torch.no_grad():
        a = model(x, t, context, mask)
        b = model(x, t, noisy, mask)
        c = model(x, t, noisy, torch.ones_like(mask))
    assert torch.allclose(a, b, atol=1e-6)
    assert (a - c).abs().max() > 1e-3


def test_odd_latent_sides_are_padded_to_the_patch(sigma_ckpt):
    """Sides that are not whole patches: the latent is edge-padded to the patch grid and the output cropped back, i.e.
    diffusers' transformer on the replicate-padded latent, cropped."""
    model = load_dit(sigma_ckpt.paths["original_safetensors"])
    x, t, context, mask = _inputs(sigma_ckpt, 15, 17)
    with torch.no_grad():
        out = model(x, t, context, mask)
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1), mode="replicate")  # (2, 4, 16, 18)
    ref = _reference(sigma_ckpt, padded, t, context, mask)[:, :, :15, :17]
    assert out.shape == (2, 8, 15, 17)
    assert (out - ref).abs().max() <= TOLERANCE


def test_learned_null_caption_is_kept(sigma_ckpt):
    model = load_dit(sigma_ckpt.paths["original_pth"])
    assert model.config.has_null_caption
    assert torch.equal(model.null_caption(2)[1], sigma_ckpt.null_caption)
