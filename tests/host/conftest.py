"""Host-tier fixtures: one real ComfyUI server for the session, with tiny models in every layout."""
import pytest

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
