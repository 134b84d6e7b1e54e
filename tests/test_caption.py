"""PixArt's caption rules as the nodes run them (pixart.caption.CaptionTokenizer), against diffusers' PixArtSigmaPipeline
encoding the same prompt: the ids and mask that reach the pipeline's T5, for case, EOS, padding, truncation (with the
count), the empty prompt and ComfyUI's weight syntax."""
import pytest
import torch

from pixart_sigma_nodes.pixart.caption import CaptionTokenizer, parse_weights

PROMPTS = ["A photo of a CAT riding the moon", "", "  red   dog  ", "an oil painting of a city at night " * 40,
           "astronaut riding a horse in space", "A Red DOG\non the moon"]


@pytest.fixture(scope="module")
def pipeline(tiny_tokenizer):
    """diffusers' pipeline with the tiny tokenizer and a real tiny T5 whose inputs are recorded."""
    from diffusers import PixArtSigmaPipeline
    from transformers import T5Config, T5EncoderModel

    t5 = T5EncoderModel(T5Config(vocab_size=64, d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2)).eval()
    seen = []
    t5.register_forward_pre_hook(lambda module, args, kwargs: seen.append(
        (args[0] if args else kwargs["input_ids"], kwargs["attention_mask"])), with_kwargs=True)
    pipe = PixArtSigmaPipeline(tokenizer=tiny_tokenizer[0], text_encoder=t5, vae=None, transformer=None, scheduler=None)

    def encode(prompt: str, max_length: int, clean_caption: bool = False) -> tuple[list[int], list[int]]:
        seen.clear()
        pipe.encode_prompt(prompt, do_classifier_free_guidance=False, device=torch.device("cpu"),
                           max_sequence_length=max_length, clean_caption=clean_caption)
        ids, mask = seen[0]
        return ids[0].tolist(), mask[0].tolist()

    return encode


@pytest.fixture(scope="module")
def ours(tiny_tokenizer):
    """The nodes' tokenizer on the same T5 vocabulary: `encode` as the nodes build it from a tokenizer folder."""
    tokenizer = tiny_tokenizer[0]
    return lambda caption_tokens=300, clean=False: CaptionTokenizer.from_hf_tokenizer(tokenizer, caption_tokens,
                                                                                     clean=clean)


@pytest.mark.parametrize("max_length", [120, 300, 77, 8, 1])
@pytest.mark.parametrize("prompt", PROMPTS, ids=range(len(PROMPTS)))
def test_caption_equals_the_pipeline(pipeline, ours, prompt, max_length):
    ids, mask = pipeline(prompt, max_length)
    caption = ours(max_length).caption(prompt)
    assert caption.ids == ids and caption.mask == mask
    assert caption.length == sum(mask) and set(caption.weights) == {1.0}
    (batch,) = ours(max_length).tokenize_with_weights(prompt)  # what ComfyUI's CLIP receives
    assert [token for token, _ in batch] == ids


def test_truncation_is_counted_and_reported(pipeline, ours, tiny_tokenizer, caplog):
    prompt = "a big red dog " * 100
    with caplog.at_level("WARNING"):
        caption = ours(120).caption(prompt)
    full = tiny_tokenizer[0](prompt.lower().strip(), add_special_tokens=False).input_ids
    assert caption.dropped == len(full) - 119 > 0
    assert caption.ids == pipeline(prompt, 120)[0] and caption.ids[-1] == 1 and caption.length == 120
    assert "over PixArt's 120-token limit" in caplog.text


def test_empty_prompt_is_eos_only(pipeline, ours):
    caption = ours(300).caption("")
    assert caption.ids[:2] == [1, 0] and caption.mask == [1] + [0] * 299 and caption.dropped == 0
    assert (caption.ids, caption.mask) == pipeline("", 300)


@pytest.mark.parametrize("prompt,plain,weight", [
    ("(a red dog:1.5)", "a red dog", 1.5),
    ("((A Red Dog))", "a red dog", 1.1 * 1.1),
    ("(a cat on the moon)", "a cat on the moon", 1.1),
])
def test_weight_syntax_gives_the_words_with_their_weight(pipeline, ours, prompt, plain, weight):
    caption = ours(300).caption(prompt)
    ids, mask = pipeline(plain, 300)
    assert caption.ids == ids and caption.mask == mask
    assert caption.weights[: caption.length - 1] == pytest.approx([weight] * (caption.length - 1))
    assert caption.weights[caption.length - 1:] == [1.0] * (300 - caption.length + 1)  # EOS and padding


def test_escaped_brackets_are_words(pipeline, ours):
    caption = ours(300).caption(r"a \(red\) dog")
    assert (caption.ids, caption.mask) == pipeline("a (red) dog", 300) and set(caption.weights) == {1.0}


def test_weight_parsing_rules():
    assert parse_weights("a (red:1.5) ((dog)) on (the:0.5) moon") == [
        ("a ", 1.0), ("red", 1.5), (" ", 1.0), ("dog", pytest.approx(1.21)), (" on ", 1.0), ("the", 0.5),
        (" moon", 1.0)]
    # a number after the last colon is a weight, as in ComfyUI: "(12:30)" is "12" at 30
    assert parse_weights("time (12:30) (x:y)") == [("time ", 1.0), ("12", 30.0), (" ", 1.0), ("x:y", 1.1)]
    assert parse_weights("((a:2) b)") == [("a", 2.0), (" b", pytest.approx(1.1))]
    assert parse_weights(r"\(literal\) ) (after") == [("(literal) ) (after", 1.0)]


def test_embeddings_are_placed_as_vectors(ours, caplog):
    vectors = torch.randn(2, 32)
    tokenizer = ours(300)
    tokenizer.embedding = lambda name: vectors if name == "Style" else None
    caption = tokenizer.caption("A (embedding:Style:1.2) dog, embedding:missing cat")
    rows = [token for token in caption.tokens[: caption.length - 1] if isinstance(token[0], torch.Tensor)]
    assert len(rows) == 2 and all(torch.equal(row[0], vectors[i]) and row[1] == 1.2 for i, row in enumerate(rows))
    assert "embedding:missing does not exist" in caplog.text


CLEANING_PROMPTS = ["A cat on https://example.com/cats and @someone #moon", "<b>A RED</b> dog &amp; city 寺院 at night",
                    "a \\(big\\) [red] dog – “riding” a horse 1234567", "photo_of_a_cat_on_the_moon.jpg in space"]


@pytest.mark.parametrize("prompt", CLEANING_PROMPTS, ids=range(len(CLEANING_PROMPTS)))
def test_cleaned_caption_equals_the_pipeline_with_clean_caption(pipeline, ours, prompt):
    """clean_caption on the T5 CLIP, or asked for per prompt (the tokenizer option PixArt Text Encode sets), equals
    encode_prompt(clean_caption=True); off, it equals clean_caption=False."""
    pytest.importorskip("ftfy")
    pytest.importorskip("bs4")
    from pixart_sigma_nodes.pixart.caption import CLEAN_CAPTION_OPTION

    cleaned = pipeline(prompt, 300, clean_caption=True)
    assert ours(300, clean=True).caption(prompt).ids == cleaned[0]
    assert ours(300).caption(prompt, {CLEAN_CAPTION_OPTION: True}).ids == cleaned[0]
    assert ours(300).caption(prompt).ids == pipeline(prompt, 300)[0] != cleaned[0]


def test_cleaning_applies_after_the_weight_syntax(ours, tiny_tokenizer):
    """Each piece of text between the weight syntax is cleaned on its own: the weight stays on its words."""
    pytest.importorskip("ftfy")
    pytest.importorskip("bs4")
    caption = ours(300, clean=True).caption("a (red:1.5) dog on http://moon.com")
    pieces = [(tiny_tokenizer[0](text, add_special_tokens=False).input_ids, weight)
              for text, weight in (("a", 1.0), ("red", 1.5), ("dog on", 1.0))]
    assert caption.ids[: caption.length] == [i for ids, _ in pieces for i in ids] + [1]
    assert caption.weights[: caption.length - 1] == [weight for ids, weight in pieces for _ in ids]
