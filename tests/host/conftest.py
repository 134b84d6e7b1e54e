"""Host-tier fixtures: one real ComfyUI server for the session, with tiny models in every layout."""
import pytest
import torch

from bench.fixtures.comfy_server import ComfyServer
from bench.fixtures.models_folder import write_models_folder
from host.comfy_host import require_comfyui


@pytest.fixture(scope="session")
def server(tmp_path_factory, sigma_ckpt, alpha_ckpt, tiny_tokenizer):
    base = str(tmp_path_factory.mktemp("comfy_base"))
    reference = write_models_folder(base, sigma_ckpt.paths, alpha_ckpt.paths, tiny_tokenizer[0])
    instance = ComfyServer(require_comfyui(), base)
    instance.reference = {**reference, "tokenizer": tiny_tokenizer[0]}
    yield instance
    instance.stop()


@pytest.fixture(scope="module")
def pixart_model(sigma_ckpt):
    """The session's tiny PixArt-Σ through the pack's DiT loader (fp32), in the host's patcher; needs ComfyUI imported
    (bench.fixtures.pack.import_comfy) by the test module."""
    from pixart_sigma_nodes.nodes import model_loading

    return model_loading.load_dit_patcher(sigma_ckpt.paths["original_safetensors"], "fp32")


@pytest.fixture(scope="module")
def tiny_conds():
    """(positive, negative) CONDITIONING for the tiny models: random 300-token T5 features with 9 and 5 real tokens."""
    generator = torch.Generator().manual_seed(3)
    out = []
    for length in (9, 5):
        context = torch.randn(1, 300, 32, generator=generator)
        mask = torch.zeros(1, 300)
        mask[0, :length] = 1
        out.append([[context, {"attention_mask": mask}]])
    return out


def _native_manual_cast(weight_dtype, device, supported_dtypes=None):
    """unet_manual_cast of a GPU that computes natively in fp16 and bf16 (an H100): no cast for those, bf16 for fp8."""
    return None if weight_dtype in (None, torch.float32, torch.float16, torch.bfloat16) else torch.bfloat16


@pytest.fixture
def simulated_nvidia(monkeypatch):
    """What current ComfyUI's main.py sets on NVIDIA, simulated in-process on this CPU: dynamic VRAM on
    (memory_management.aimdo_enabled, so comfy.ops builds lazy layers that keep the tensors they are given, and
    CoreModelPatcher = ModelPatcherDynamic, which for a CPU load device hands back a plain ModelPatcher, so the
    assign=True load itself is not reached here), and a GPU computing natively in the storage dtype
    (unet_manual_cast returns None for fp16/bf16)."""
    import comfy.model_management
    import comfy.model_patcher

    try:
        import comfy.memory_management as memory_management
    except ImportError:
        memory_management = None
    if memory_management is None or not hasattr(memory_management, "aimdo_enabled"):
        pytest.skip("this ComfyUI has no dynamic VRAM (comfy.memory_management.aimdo_enabled)")
    monkeypatch.setattr(memory_management, "aimdo_enabled", True)
    if hasattr(comfy.model_patcher, "ModelPatcherDynamic"):
        monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcherDynamic)
    monkeypatch.setattr(comfy.model_management, "unet_manual_cast", _native_manual_cast)
