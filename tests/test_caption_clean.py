"""Caption cleaning equals diffusers' PixArt pipelines' (clean_caption=True: their _clean_caption, run twice) on prompts
that exercise every rule; without ftfy/beautifulsoup4 it is an error naming them, never a silent skip."""
import builtins

import pytest

from pixart_sigma_nodes.pixart import caption_clean
from pixart_sigma_nodes.pixart.caption_clean import CaptionCleaningUnavailable, clean_caption

pytest.importorskip("ftfy", reason="caption cleaning tests need ftfy (requirements-dev.txt)")
pytest.importorskip("bs4", reason="caption cleaning tests need beautifulsoup4 (requirements-dev.txt)")

PROMPTS = {
    "url": "A cat on https://example.com/cats?id=3 and www.catpics.org/best",
    "html": "<b>A red</b> <i>dog</i> &amp; a <a href='x'>cat</a> &quot;hello&quot; &lt;3",
    "cjk": "A temple 寺院 at night, 夜の寺 ㇰ ㈱ ㌔",
    "hashtag": "Sunset #beach #123 #12345 over the sea #travel",
    "brackets": "A [red] {blue} <green> cat |with| a \\(hat\\) and ***stars*** ~~waves~~ / \\ slash",
    "dashes and quotes": "It‐is – a “quoted” ‘word’ — «guillemets» ``ticks´´ and ''double'' and ...dots...",
    "numbers": "Photo 1234567 of 12 cats at 192.168.0.1, 3:45 , page 12, 1920x1080 and 2.5x3",
    "file names": "my_photo.jpg and scan.pdf and clip.mp4 image and png images",
    "handles": "Art by @someone_123 and @Another for @team",
    "joined words": "this-is-my-cute-cat_with_many_joins",
    "codes": "Model jc6640 and jc6640vc and 6640vc231 and j2d1a2a and ab123",
    "shopping": "Free shipping worldwide free shipping, free download, click for details, download free",
    "escapes and encodings": "A caf%C3%A9 with â€œmojibakeâ€ and \\n a new line and plus+signs",
    "enclosing punctuation": "\"A quoted caption\"",
    "leading and trailing": "-:leading and trailing:+",
    "person": "<person> riding a horse",
    "plain": "A photo of an astronaut riding a horse on the moon",
}


@pytest.fixture(scope="module")
def diffusers_cleaning():
    from diffusers import PixArtSigmaPipeline

    pipeline = object.__new__(PixArtSigmaPipeline)  # its text preprocessing needs no model
    return lambda text: pipeline._text_preprocessing(text, clean_caption=True)[0]


@pytest.mark.parametrize("rule", list(PROMPTS))
def test_cleaning_equals_diffusers(diffusers_cleaning, rule):
    text = PROMPTS[rule]
    ours, theirs = clean_caption(text), diffusers_cleaning(text)
    print(f"\n{rule}: {text!r} -> {ours!r}")
    assert ours == theirs


def test_every_rule_changes_its_prompt():
    changed = [rule for rule, text in PROMPTS.items() if rule != "plain" and clean_caption(text) == text.lower().strip()]
    assert changed == []


def test_missing_packages_are_an_error_naming_them(monkeypatch):
    real_import = builtins.__import__

    def without_ftfy(name, *args, **kwargs):
        if name == "ftfy":
            raise ImportError("No module named 'ftfy'", name="ftfy")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", without_ftfy)
    with pytest.raises(CaptionCleaningUnavailable, match=r"ftfy and beautifulsoup4 \(ftfy is missing\).*pip install "
                                                          r"ftfy beautifulsoup4"):
        clean_caption("a cat")
    with pytest.raises(CaptionCleaningUnavailable, match="pip install ftfy beautifulsoup4"):
        caption_clean.require_cleaning()  # what the T5 loader calls before loading anything
