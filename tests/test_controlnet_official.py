"""Our ControlNet against the official ControlPixArtMSHalf itself (PixArt-alpha repository, diffusion/model/nets/
pixart_controlnet.py), on the same random weights saved in the official layout: residuals and controlled output <= 1e-5.

Runs only when PIXART_ALPHA_REPO points at a checkout of github.com/PixArt-alpha/PixArt-alpha (no code of it is kept
here). Its training-time imports are stood in for, in this test only, where they are not installed: mmcv (a model
registry and a logger table), timm (Mlp, DropPath, PatchEmbed, the Attention base class) and xformers
(memory_efficient_attention with a block-diagonal mask, computed densely with torch's SDPA).
"""
import os
import sys
import types

import pytest
import torch
from torch import nn

from bench.fixtures.controlnet import official_layout, save_controlnet_files, tiny_controlnet
from pixart_sigma_nodes.pixart.checkpoint import load_dit
from pixart_sigma_nodes.pixart.checkpoint.controlnet import load_controlnet
from pixart_sigma_nodes.pixart.controlnet import ControlInput

REPO = os.environ.get("PIXART_ALPHA_REPO")
if not REPO or not os.path.isfile(os.path.join(REPO, "diffusion", "model", "nets", "pixart_controlnet.py")):
    pytest.skip("official ControlNet comparison skipped: set PIXART_ALPHA_REPO to a checkout of "
                "github.com/PixArt-alpha/PixArt-alpha", allow_module_level=True)

TOLERANCE = 1e-5


def _module(name: str, **attributes) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__dict__.update(attributes)
    module.__path__ = []
    return module


class _BlockDiagonalMask:
    def __init__(self, q_lens, kv_lens):
        self.q_lens, self.kv_lens = [int(n) for n in q_lens], [int(n) for n in kv_lens]

    @classmethod
    def from_seqlens(cls, q_seqlen, kv_seqlen=None):
        return cls(q_seqlen, kv_seqlen if kv_seqlen is not None else q_seqlen)

    def dense(self, dtype) -> torch.Tensor:
        bias = torch.full((sum(self.q_lens), sum(self.kv_lens)), float("-inf"), dtype=dtype)
        q0 = k0 = 0
        for q, k in zip(self.q_lens, self.kv_lens):
            bias[q0:q0 + q, k0:k0 + k] = 0
            q0, k0 = q0 + q, k0 + k
        return bias


def _memory_efficient_attention(q, k, v, p=0.0, attn_bias=None):
    # q, k, v: (B, N, H, d) -> (B, N, H, d)
    mask = attn_bias.dense(q.dtype) if attn_bias is not None else None
    out = torch.nn.functional.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                                           attn_mask=mask)
    return out.transpose(1, 2)


class _Mlp(nn.Module):
    def __init__(self, in_features, hidden_features=None, out_features=None, act_layer=nn.GELU, drop=0.0, **_):
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features or in_features)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden_features or in_features, out_features or in_features)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class _Attention(nn.Module):
    def __init__(self, dim, num_heads=8, qkv_bias=False, attn_drop=0.0, proj_drop=0.0, **_):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.scale = self.head_dim ** -0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.attn_drop = nn.Dropout(attn_drop)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)


class _PatchEmbed(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, embed_dim=768, bias=True, **_):
        super().__init__()
        self.patch_size = (patch_size, patch_size)
        self.num_patches = (img_size // patch_size) ** 2
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size, bias=bias)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class _Registry:
    def __init__(self, name):
        self.name = name

    def register_module(self, *args, **kwargs):
        return (lambda cls: cls) if not args or not isinstance(args[0], type) else args[0]


@pytest.fixture(scope="module")
def official(monkeypatch_module):
    from diffusers import PixArtTransformer2DModel  # noqa: F401 - before the stand-ins (diffusers probes packages)

    stubs = {"mmcv": _module("mmcv", Registry=_Registry), "mmcv.utils": _module("mmcv.utils"),
             "mmcv.utils.logging": _module("mmcv.utils.logging", logger_initialized={}),
             "mmcv.runner": _module("mmcv.runner", get_dist_info=lambda: (0, 1)),
             "timm": _module("timm"), "timm.models": _module("timm.models"),
             "timm.models.layers": _module("timm.models.layers", DropPath=lambda p: nn.Identity()),
             "timm.models.vision_transformer": _module("timm.models.vision_transformer", Mlp=_Mlp,
                                                       Attention=_Attention, PatchEmbed=_PatchEmbed),
             "xformers": _module("xformers"),
             "xformers.ops": _module("xformers.ops", memory_efficient_attention=_memory_efficient_attention,
                                     fmha=types.SimpleNamespace(BlockDiagonalMask=_BlockDiagonalMask))}
    for name, module in stubs.items():
        parent, _, child = name.rpartition(".")
        if parent:
            setattr(stubs[parent], child, module)
    for name, module in stubs.items():
        try:
            __import__(name)
        except ImportError:
            monkeypatch_module.setitem(sys.modules, name, module)
    # the packages without their __init__ side effects (samplers, training utilities): only the model files load
    monkeypatch_module.setitem(sys.modules, "diffusion", _module("diffusion"))
    sys.modules["diffusion"].__path__ = [os.path.join(REPO, "diffusion")]
    monkeypatch_module.syspath_prepend(REPO)
    from diffusion.model.nets import ControlPixArtMSHalf, PixArtMS

    return ControlPixArtMSHalf, PixArtMS


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.mark.parametrize("size", [(128, 128), (12, 20)], ids=str)
def test_equals_control_pixart_ms_half(official, tmp_path_factory, size):
    ControlPixArtMSHalf, PixArtMS = official
    net = tiny_controlnet()
    paths = save_controlnet_files(net, str(tmp_path_factory.mktemp("official")))
    base = PixArtMS(input_size=128, patch_size=2, in_channels=4, hidden_size=144, depth=5, num_heads=2,
                    caption_channels=32, lewei_scale=2.0, model_max_length=120)
    model = ControlPixArtMSHalf(base, copy_blocks_num=net.depth).eval()
    state = {k: v for k, v in official_layout(net).items() if k != "base_model.pos_embed"}  # as the official app
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert unexpected == [] and set(missing) <= {"base_model.pos_embed"}

    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, *size, generator=generator)
    hint = torch.randn(2, 4, *size, generator=generator)
    t = torch.tensor([981.0, 317.0])
    context = torch.randn(2, 120, 32, generator=generator)
    mask = torch.zeros(2, 120)
    mask[0, :9], mask[1, :] = 1, 1
    hw = torch.tensor([[size[0] * 8.0, size[1] * 8.0]] * 2)
    official_residuals, ours_residuals = [], []
    hooks = [block.after_proj.register_forward_hook(lambda m, a, out: official_residuals.append(out))
             for block in model.controlnet]
    with torch.no_grad():
        reference = model(x, t, context[:, None], mask=mask[:, None, None],
                          data_info={"img_hw": hw, "aspect_ratio": hw[:, :1] / hw[:, 1:]}, c=hint)
    for hook in hooks:
        hook.remove()

    dit, control = load_dit(paths["official_pth"]), load_controlnet(paths["official_pth"])
    hooks = [block.after_proj.register_forward_hook(lambda m, a, out: ours_residuals.append(out))
             for block in control.controlnet]
    with torch.no_grad():
        ours = dit(x, t, context, mask, control=[ControlInput(control, hint)])
    for hook in hooks:
        hook.remove()
    residual_errors = [(a - b).abs().max().item() for a, b in zip(ours_residuals, official_residuals)]
    error = (ours - reference).abs().max().item()
    print(f"\nofficial ControlPixArtMSHalf {size}: output max abs error {error:.1e}, residuals "
          f"{[f'{e:.1e}' for e in residual_errors]}")
    assert len(residual_errors) == net.depth and max(residual_errors) <= TOLERANCE
    assert error <= TOLERANCE
