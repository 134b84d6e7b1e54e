"""PixArtDiT.encode_caption: a caption encoded once and reused gives the same prediction as encoding it per call."""
import pytest
import torch
from test_dit_parity import _inputs, _reference

from pixart_sigma_nodes.pixart import load_dit


@pytest.fixture
def sigma(sigma_ckpt):
    return load_dit(sigma_ckpt.paths["original_safetensors"])


def test_reused_caption_equals_fresh_forward(sigma, sigma_ckpt):
    x, t, context, mask = _inputs(sigma_ckpt, 16, 16)
    with torch.no_grad():
        caption = sigma.encode_caption(context, mask)
        fresh = sigma(x, t, context, mask)
        reused = [sigma(x, step, None, caption=caption) for step in (t, t.flip(0))]
        flipped = sigma(x, t.flip(0), context, mask)
    assert torch.equal(reused[0], fresh)
    assert torch.equal(reused[1], flipped)


def test_padding_trimmed_to_the_longest_prompt(sigma, sigma_ckpt):
    x, t, context, mask = _inputs(sigma_ckpt, 16, 16, lengths=(7, 50))
    caption = sigma.encode_caption(context, mask)
    key, value = caption.kv[0]
    assert key.shape[1] == value.shape[1] == 50 and caption.bias.shape == (2, 1, 1, 50)
    assert len(caption.kv) == len(sigma.blocks)


def test_no_padding_left_drops_the_mask(sigma, sigma_ckpt):
    """Prompts of equal length: after trimming no padding remains, so no bias (fused unmasked kernels run)."""
    x, t, context, mask = _inputs(sigma_ckpt, 16, 16, lengths=(9, 9))
    with torch.no_grad():
        caption = sigma.encode_caption(context, mask)
        ours = sigma(x, t, None, caption=caption)
    assert caption.bias is None and caption.kv[0][0].shape[1] == 9
    assert (ours - _reference(sigma_ckpt, x, t, context, mask)).abs().max().item() <= 1e-5


def test_caption_for_another_batch_is_refused(sigma, sigma_ckpt):
    x, t, context, mask = _inputs(sigma_ckpt, 16, 16)
    caption = sigma.encode_caption(context[:1], mask[:1])
    with pytest.raises(ValueError, match="batch 1, the latent 2"):
        sigma(x, t, None, caption=caption)
