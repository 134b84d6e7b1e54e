"""Host-tier fixtures: one real ComfyUI server for the session, with tiny models in every layout."""
import shutil

import pytest
import torch
from safetensors.torch import save_file

from host.comfy_host import require_comfyui, t5_state_dict, tiny_t5, tiny_vae
from host.comfy_server import ComfyServer
from tiny_models import original_layout, tiny_transformer

REPO = "PixArt-Sigma-tiny"


@pytest.fixture(scope="session")
def server(tmp_path_factory, sigma_ckpt, alpha_ckpt, tiny_tokenizer):
    base = tmp_path_factory.mktemp("comfy_base")
    models = base / "models"
    for folder in ("diffusion_models", "text_encoders", "vae", "diffusers"):
        (models / folder).mkdir(parents=True)
    shutil.copy(sigma_ckpt.paths["original_safetensors"], models / "diffusion_models" / "sigma-tiny.safetensors")
    shutil.copy(sigma_ckpt.paths["original_pth"], models / "diffusion_models" / "sigma-tiny.pth")
    shutil.copy(alpha_ckpt.paths["original_safetensors"], models / "diffusion_models" / "alpha-tiny.safetensors")
    repo = models / "diffusers" / REPO
    shutil.copytree(sigma_ckpt.paths["diffusers_repo"], repo)
    t5 = tiny_t5()
    save_file(t5_state_dict(t5), str(models / "text_encoders" / "t5-tiny.safetensors"))
    t5.save_pretrained(str(repo / "text_encoder"), max_shard_size="200KB")
    tiny_tokenizer[0].save_pretrained(str(repo / "tokenizer"))
    sigma256, null256 = tiny_transformer("sigma", False, seed=20, sample_size=32, interpolation_scale=0.5)
    torch.save({"state_dict": original_layout(sigma256, null256)}, str(models / "diffusion_models" / "sigma256-tiny.pth"))
    vae = tiny_vae()
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(models / "vae" / "vae-tiny.safetensors"))
    vae.save_pretrained(str(repo / "vae"))
    (base / "input").mkdir(exist_ok=True)
    instance = ComfyServer(require_comfyui(), str(base))
    instance.reference = {"t5": t5, "vae": vae, "sigma256": sigma256, "tokenizer": tiny_tokenizer[0]}
    yield instance
    instance.stop()
