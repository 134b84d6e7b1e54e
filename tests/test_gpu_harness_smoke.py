"""bench/gpu_harness.py on CPU with its tiny smoke model: every section runs, the sampling loop it times reproduces
diffusers' PixArtSigmaPipeline, so the GPU numbers time the right computation, its FLOP model gives the design's
figures, and the dtype figures say which casting ops they ran on (ComfyUI's own when COMFYUI_PATH names a checkout).
Timings themselves are not tested: they are the benchmark's figures."""
import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")
if not hasattr(diffusers, "PixArtSigmaPipeline"):
    pytest.skip(f"diffusers {diffusers.__version__} has no PixArtSigmaPipeline", allow_module_level=True)

from bench import gpu_harness  # noqa: E402
from bench.fixtures.models import random_pair  # noqa: E402
from bench.fixtures.pack import comfyui_path  # noqa: E402
from bench.fixtures.pipelines import pipeline_latents, sigma_pipeline  # noqa: E402
from bench.fixtures.sampling import sample  # noqa: E402
from bench.fixtures.schedulers import pixart_sigma_scheduler  # noqa: E402
from bench.gpu.casting import STANDIN_CAST, Casting  # noqa: E402
from bench.gpu.inputs import SMOKE, caption_inputs  # noqa: E402
from bench.gpu.runner import SECTIONS  # noqa: E402
from pixart_sigma_nodes.pixart.dit import PixArtDiT  # noqa: E402

SIZES = ("1024", "2048", "4096")
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu-harness") / "x.json"
    returned = gpu_harness.main(["--device", "cpu", "--smoke", "--out", str(out)])
    written = json.loads(out.read_text())
    assert written.keys() == returned.keys()
    return written


def test_every_section_reports(report):
    expected = [s for s in SECTIONS if s != "compile"]  # compile only runs with --compile
    assert [key for key in report if key in SECTIONS] == expected
    for name in expected:
        assert "error" not in report[name], (name, report[name])
    assert report["memory"]["skipped"] == "n/a on cpu"
    assert report["meta"]["device"].startswith("cpu") and report["meta"]["torch"] == torch.__version__
    assert report["config"]["depth"] == 2 and report["config"]["head_dim"] == 72


def test_report_says_what_it_ran(report):
    """What the sections report besides timings (those are the benchmark's, not the test's, to judge)."""
    for px in SIZES:
        assert report["step"][px]["finite"] and report["image"][px]["estimated"] is False
    assert all(report["dtype"][name]["finite"] for name in ("bf16", "fp16", "fp8_e4m3fn"))
    assert report["dtype"]["fp8_e4m3fn"]["weights_gb"] < report["dtype"]["bf16"]["weights_gb"]
    assert report["kv"]["image_4096_all_layers"]["estimated"] is False
    assert report["attention"]["sdpa_backends_used"] and report["attention"]["events"]
    assert {"1024", "2048"} <= report["diffusers"].keys()
    assert len(report["summary"]["targets"]) == 5


@pytest.mark.parametrize("side,tflop", [(1024, 6.6), (2048, 52.0), (4096, 625.0)])
def test_flop_model_gives_the_designs_figures(side, tflop):
    """Full-width PixArt-Σ (28 blocks): the design's 6.6 / 52 / 625 TFLOP per single-sample forward at 1024 / 2K / 4K,
    to the two significant figures it quotes; compressing K/V 2x2 in every block leaves the linear layers alone."""
    from bench.fixtures.flops import forward_flops
    from bench.fixtures.models import sigma_width_config

    config = sigma_width_config(depth=28)
    tokens = (side // 16) ** 2  # VAE /8, patch 2
    flops = forward_flops(config, tokens, config.caption_tokens)
    assert flops / 1e12 == pytest.approx(tflop, rel=0.05)
    compressed = forward_flops(config, tokens, config.caption_tokens, kv_tokens=tokens // 4, kv_layers=28)
    assert flops > compressed > flops - 4 * tokens * 1152 * 28 * tokens


def test_dtype_figures_name_their_casting(report):
    """With ComfyUI importable the fp8 figure runs on comfy.ops.manual_cast; without, every dtype figure says it is a
    stand-in."""
    dtype = report["dtype"]
    assert report["meta"]["comfyui"] == comfyui_path()
    if comfyui_path():
        assert dtype["fp8_e4m3fn"]["casting"] == "comfy.ops.manual_cast"
        assert dtype["bf16"]["casting"].startswith("comfy.ops.")
    else:
        assert dtype["fp8_e4m3fn"]["casting"] == STANDIN_CAST
        assert "stand-in" in dtype["casting"], dtype
        assert all("stand-in" in dtype[name]["casting"] for name in ("bf16", "fp16")), dtype


def test_fp8_model_casts_its_stored_weights_per_layer():
    """The fp8 model the dtype section times computes what plain torch computes in bf16 from its stored weights."""
    ours, _ = random_pair(**SMOKE, seed=4)
    fp8, _ = Casting(CPU).build(ours, torch.float8_e4m3fn, torch.bfloat16)
    stored = fp8.state_dict()
    assert stored["blocks.0.mlp.fc1.weight"].dtype == torch.float8_e4m3fn
    plain = PixArtDiT(ours.config, dtype=torch.bfloat16).eval()
    plain.load_state_dict({key: value.to(torch.bfloat16) for key, value in stored.items()})
    context, mask = caption_inputs(ours.config.caption_channels, CPU, torch.bfloat16)
    x = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(6)).bfloat16()  # (B, 4, h, w)
    t = torch.full((2,), 500.0)
    with torch.inference_mode():
        expected = plain(x, t, context, mask)  # (2, 8, 8, 8)
        torch.testing.assert_close(fp8(x, t, context, mask), expected, atol=0, rtol=0)
    assert expected.isfinite().all() and expected.std() > 0


def test_reported_latents_match_the_pipeline(report):
    for px in ("1024", "2048"):
        assert report["diffusers"][px]["latent_max_abs_diff_over_std"] < 1e-4, report["diffusers"][px]


def test_sampling_loop_equals_diffusers_pipeline():
    """Our loop (encoded caption reused every step) vs PixArtSigmaPipeline: same weights, noise and embeddings.

    Random weights predict epsilon that ignores the noise, so CFG x sigma_max (~157) drives the final latents to a
    std of ~100s; 1e-4 is applied to the latents divided by that std (the design's "~1e-4 relative")."""
    with torch.inference_mode():
        ours, reference = random_pair(**SMOKE, seed=3)
        context, mask = caption_inputs(ours.config.caption_channels, CPU, torch.float32)
        noise = torch.randn(1, 4, 12, 16, generator=torch.Generator().manual_seed(5))  # non-square latent
        caption = ours.encode_caption(context, mask, torch.float32)
        latent = sample(ours, noise, caption, pixart_sigma_scheduler())
        expected = pipeline_latents(sigma_pipeline(reference), context, mask, noise)
    scale = expected.std()
    assert latent.shape == expected.shape == noise.shape and scale > 1
    torch.testing.assert_close(latent / scale, expected / scale, atol=1e-4, rtol=0)
