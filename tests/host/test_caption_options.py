"""Host tier: the caption options against diffusers' PixArt pipelines on the real T5 tokenizer (ComfyUI's bundled
T5-v1.1 vocabulary, the one a single-file T5 uses): caption cleaning on PixArt Text Encode and on the T5 loader equals
encode_prompt(clean_caption=True) for prompts exercising every rule, off equals clean_caption=False; any token budget
equals max_sequence_length; end to end, a graph with cleaning on / a 77-token budget equals PixArtSigmaPipeline."""
import pytest
import torch

from bench.fixtures.pack import import_comfy
from bench.fixtures.reference_runs import compare, graph_outputs, reference_pipeline, text_to_image
from bench.fixtures.schedulers import pixart_sigma_scheduler
from host.comfy_host import require_comfyui

COMFYUI = require_comfyui()
import_comfy(COMFYUI)
pytest.importorskip("ftfy", reason="caption cleaning needs ftfy (requirements-dev.txt)")
pytest.importorskip("bs4", reason="caption cleaning needs beautifulsoup4 (requirements-dev.txt)")

from pixart_sigma_nodes.nodes import t5_encoder  # noqa: E402
from pixart_sigma_nodes.nodes.loaders import PixArtT5Loader  # noqa: E402
from pixart_sigma_nodes.nodes.text_encode import PixArtTextEncode  # noqa: E402

PROMPTS = [
    "A cat on https://example.com/cats?id=3 and www.catpics.org/best",  # URLs
    "<b>A red</b> <i>dog</i> &amp; a <a href='x'>cat</a> &quot;hello&quot;",  # HTML
    "A temple 寺院 at night, 夜の寺",  # CJK
    "Sunset #beach #123 #12345 over the sea #travel",  # hashtags
    "A [red] {blue} cat |with| a \\(hat\\) and ***stars*** ~~waves~~",  # brackets (round ones escaped)
    "It‐is – a “quoted” ‘word’ — «guillemets» ``ticks´´ and ''double''",  # dashes and quotes
    "Photo 1234567 of 12 cats at 192.168.0.1, page 12, 1920x1080",  # numbers
    "my_photo.jpg and scan.pdf and clip.mp4 image",  # file names
    "Art by @someone_123 and @another for @team",  # handles
    "this-is-my-cute-cat_with_many_joins",  # joined words
    "Model jc6640 and jc6640vc, free shipping, click for details",  # codes and shop text
    "A caf%C3%A9 with â€œmojibakeâ€ and \\n a new line",  # escapes and encodings
    "A photo of an astronaut riding a horse on the moon",  # nothing to clean
]


@pytest.fixture(scope="module")
def t5_file(tmp_path_factory):
    from safetensors.torch import save_file

    from bench.fixtures.models import t5_state_dict, tiny_t5

    model = tiny_t5(seed=4)
    path = str(tmp_path_factory.mktemp("t5_clean") / "t5-tiny.safetensors")
    save_file(t5_state_dict(model), path)
    return model, path


@pytest.fixture(scope="module")
def pipeline(t5_file):
    """PixArtSigmaPipeline's prompt encoding with the same T5 and ComfyUI's bundled T5 tokenizer."""
    from diffusers import PixArtSigmaPipeline
    from transformers import T5TokenizerFast

    tokenizer = T5TokenizerFast.from_pretrained(t5_encoder.BUNDLED_TOKENIZER)
    pipe = PixArtSigmaPipeline(tokenizer=tokenizer, text_encoder=t5_file[0], vae=None, transformer=None, scheduler=None)

    def encode(text, clean, length=300):
        with torch.no_grad():
            embeds, mask, _, _ = pipe.encode_prompt(text, do_classifier_free_guidance=False, device=torch.device("cpu"),
                                                    clean_caption=clean, max_sequence_length=length)
        return embeds, mask

    return encode


def _conditioning(clip, text, clean=False):
    (cond, extras), = PixArtTextEncode.execute(clip, text, clean_caption=clean).args[0]
    return cond, extras["attention_mask"]


def _same(ours, theirs):
    (cond, mask), (embeds, ref_mask) = ours, theirs
    real = ref_mask[0].bool()
    return (torch.equal(mask.to(ref_mask.dtype), ref_mask) and cond.shape == embeds.shape
            and (cond[0, real] - embeds[0, real]).abs().max().item() <= 1e-5)


@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_clean_caption_equals_encode_prompt_with_cleaning(t5_file, pipeline, prompt):
    clip = t5_encoder.load_t5_clip(t5_file[1], dtype="fp32")
    assert _same(_conditioning(clip, prompt, clean=True), pipeline(prompt, True))
    if "\\" not in prompt and "(" not in prompt:  # ComfyUI's prompt syntax reads brackets and escapes its own way
        assert _same(_conditioning(clip, prompt), pipeline(prompt, False))
    cleaning_clip = t5_encoder.load_t5_clip(t5_file[1], dtype="fp32", clean=True)  # the loader's option
    assert _same(_conditioning(cleaning_clip, prompt), pipeline(prompt, True))


@pytest.mark.parametrize("length", [77, 1, 120, 300])
def test_any_budget_equals_max_sequence_length(t5_file, pipeline, length):
    prompt = "a photo of a cat riding the moon " * 20
    clip = t5_encoder.load_t5_clip(t5_file[1], dtype="fp32", caption_tokens=length)
    cond, mask = _conditioning(clip, prompt)
    assert cond.shape[1] == length and _same((cond, mask), pipeline(prompt, False, length))


def test_budget_outside_1_to_300_is_refused(t5_file):
    with pytest.raises(ValueError, match="1 to 300"):
        t5_encoder.load_t5_clip(t5_file[1], caption_tokens=301)
    with pytest.raises(ValueError, match="caption_length 'gamma_50' is unknown"):
        PixArtT5Loader.execute("t5-tiny.safetensors", "fp32", "default", "gamma_50")


@pytest.mark.parametrize("case", ["clean", "budget-77"])
def test_graph_equals_the_pipeline(server, sigma_ckpt, case):
    """End to end on the server (the tiny repo's T5 and tokenizer): T5 loader with clean_caption on, or with a custom
    77-token budget, against PixArtSigmaPipeline(clean_caption=True) / (max_sequence_length=77)."""
    from diffusers import PixArtSigmaPipeline

    seed, prompt = {"clean": (41, "A red #dog on https://moon.com @astronaut"), "budget-77": (42, "a red dog " * 40)}[case]
    graph = text_to_image("sigma-tiny.safetensors", "custom" if case == "budget-77" else "sigma_300", seed, case)
    graph["t5"]["inputs"].update(custom_length=77, clean_caption=case == "clean")
    graph["pos"]["inputs"]["text"] = prompt
    pipe = reference_pipeline(server, PixArtSigmaPipeline, "sigma", sigma_ckpt.model, pixart_sigma_scheduler())
    compare(f"graph with {case}", "sigma", graph_outputs(server, graph), pipe, seed, prompt=prompt,
            negative_prompt="", guidance_scale=4.5, num_inference_steps=20,
            max_sequence_length=77 if case == "budget-77" else 300, clean_caption=case == "clean")


def test_cleaning_without_its_packages_is_a_node_error(t5_file):
    """A loader asking for cleaning where beautifulsoup4 cannot be imported (simulated in-process): the error names
    both packages and the pip command, instead of skipping the cleaning as diffusers does."""
    import builtins

    real_import = builtins.__import__

    def without_bs4(name, *args, **kwargs):
        if name == "bs4":
            raise ImportError("No module named 'bs4'", name="bs4")
        return real_import(name, *args, **kwargs)

    builtins.__import__ = without_bs4
    try:
        with pytest.raises(RuntimeError, match=r"ftfy and beautifulsoup4 \(bs4 is missing\).*pip install"):
            t5_encoder.load_t5_clip(t5_file[1], clean=True)
    finally:
        builtins.__import__ = real_import
