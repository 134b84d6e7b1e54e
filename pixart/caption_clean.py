"""The caption cleaner diffusers' PixArt pipelines apply by default (clean_caption=True): web-scraped caption noise
removed before T5 sees the prompt, as the PixArt authors' T5 embedder did for training.

Provenance: the rules of DeepFloyd IF's caption cleaner as diffusers carries it (IFPipeline._clean_caption, copied into
PixArtAlphaPipeline and PixArtSigmaPipeline), reproduced here rule for rule so that a cleaned prompt equals diffusers'
to the character; the pipelines run it twice. It needs ftfy and beautifulsoup4, which the pack does not require:
`clean_caption` raises CaptionCleaningUnavailable naming them when they are missing (diffusers would skip the cleaning
with a warning instead).
"""
from __future__ import annotations

import html
import re
import urllib.parse as url_quoting
from collections.abc import Callable

PACKAGES = "ftfy beautifulsoup4"
PASSES = 2  # diffusers' _text_preprocessing cleans the caption twice

_FILE_TYPES = "png|jpg|jpeg|bmp|webp|eps|pdf|apk|mp4"
_TOP_LEVEL = "com|co|ru|net|org|edu|gov|it"
_DASHES = ("\u002D\u058A\u05BE\u1400\u1806\u2010-\u2015\u2E17\u2E1A\u2E3A\u2E3B\u2E40\u301C\u3030\u30A0\uFE31"
           "\uFE32\uFE58\uFE63\uFF0D")
_CJK_BLOCKS = ("\u31c0-\u31ef",  # CJK strokes
               "\u31f0-\u31ff",  # katakana phonetic extensions
               "\u3200-\u32ff",  # enclosed CJK letters and months
               "\u3300-\u33ff",  # CJK compatibility
               "\u3400-\u4dbf",  # CJK unified ideographs extension A
               "\u4dc0-\u4dff",  # Yijing hexagram symbols
               "\u4e00-\u9fff")  # CJK unified ideographs
_PUNCTUATION = "#®•©™&@·º½¾¿¡§~" + r"\)\(\]\[\}\{\|" + "\\" + r"\/\*"

# (what it removes, pattern, replacement), applied in order before and after the HTML and text-encoding repairs
_BEFORE_MARKUP = [
    ("<person> tags", r"<person>", "person"),
    ("web addresses", r"\b((?:https?:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:" + _TOP_LEVEL
     + r")[\w/-]*\b\/?(?!@)))", ""),
    ("www addresses", r"\b((?:www:(?:\/{1,3}|[a-zA-Z0-9%])|[a-zA-Z0-9.\-]+[.](?:" + _TOP_LEVEL
     + r")[\w/-]*\b\/?(?!@)))", ""),
]
_AFTER_MARKUP = [
    ("@handles", r"@[\w\d]+\b", ""),
    *((f"CJK block {block}", f"[{block}]+", "") for block in _CJK_BLOCKS),
    ("dashes of every kind", f"[{_DASHES}]+", "-"),
    ("double quotes", r"[`´«»“”¨]", '"'),
    ("single quotes", r"[‘’]", "'"),
    ("&quot;", r"&quot;?", ""),
    ("&amp", r"&amp", ""),
    ("IP addresses", r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}", " "),
    ("article ids", r"\d:\d\d\s+$", ""),
    ("escaped line breaks", r"\\n", " "),
    ("#123", r"#\d{1,3}\b", ""),
    ("#12345...", r"#\d{5,}\b", ""),
    ("numbers of 6+ digits", r"\b\d{6,}\b", ""),
    ("file names", r"[\S]+\.(?:" + _FILE_TYPES + ")", ""),
    ("repeated quotes", r"[\"\']{2,}", '"'),
    ("repeated dots", r"[\.]{2,}", " "),
    ("punctuation runs", f"[{_PUNCTUATION}]{{1,}}", " "),
    ("lone dots", r"\s+\.\s+", " "),
]
_AFTER_REPAIR = [
    ("codes like jc6640", r"\b[a-zA-Z]{1,3}\d{3,15}\b", ""),
    ("codes like jc6640vc", r"\b[a-zA-Z]+\d+[a-zA-Z]+\b", ""),
    ("codes like 6640vc231", r"\b\d+[a-zA-Z]+\d+\b", ""),
    ("shipping", r"(worldwide\s+)?(free\s+)?shipping", ""),
    ("downloads", r"(free\s)?download(\sfree)?", ""),
    ("click for/on", r"\bclick\b\s(?:for|on)\s\w+", ""),
    ("file types", r"\b(?:" + _FILE_TYPES + r")(\simage[s]?)?", ""),
    ("page numbers", r"\bpage\s+\d+\b", ""),
    ("codes like j2d1a2a", r"\b\d*[a-zA-Z]+\d+[a-zA-Z]+\d+[a-zA-Z\d]*\b", " "),
    ("sizes like 1920x1080", r"\b\d+\.?\d*[xх×]\d+\.?\d*\b", ""),
    ("spaced colons", r"\b\s+\:\s+", ": "),
    ("punctuation stuck to a word", r"(\D[,\./])\b", r"\1 "),
    ("runs of white space", r"\s+", " "),
    ("enclosing quotes", r"^[\"\']([\w\W]+)[\"\']$", r"\1"),
    ("leading punctuation", r"^[\'\_,\-\:;]", ""),
    ("trailing punctuation", r"[\'\_,\-\:\-\+]$", ""),
    ("a lone .word", r"^\.\S+$", ""),
]
_JOINERS = re.compile(r"(?:\-|\_)")  # this-is-my-cute-cat / this_is_my_cute_cat: more than 3 become spaces


class CaptionCleaningUnavailable(RuntimeError):
    """Caption cleaning was asked for without its packages; the message names them and the pip command."""


def _compile(rules):
    return [(name, re.compile(pattern), replacement) for name, pattern, replacement in rules]


_RULES = {"before": _compile(_BEFORE_MARKUP), "after": _compile(_AFTER_MARKUP), "repair": _compile(_AFTER_REPAIR)}


def _apply(caption: str, stage: str) -> str:
    for _, pattern, replacement in _RULES[stage]:
        caption = pattern.sub(replacement, caption)
    return caption


def _libraries() -> tuple[Callable[[str], str], Callable[[str], str]]:
    """(ftfy.fix_text, HTML markup -> its text) or CaptionCleaningUnavailable naming what to install."""
    try:
        import ftfy
        from bs4 import BeautifulSoup
    except ImportError as err:
        raise CaptionCleaningUnavailable(
            f"Caption cleaning needs the Python packages ftfy and beautifulsoup4 ({err.name} is missing): install them "
            f"in ComfyUI's Python with `python -m pip install {PACKAGES}`, or turn clean_caption off.") from err
    return ftfy.fix_text, lambda text: BeautifulSoup(text, features="html.parser").text


def clean_once(caption: str) -> str:
    """One pass of the cleaner."""
    fix_text, markup_text = _libraries()
    caption = url_quoting.unquote_plus(str(caption)).strip().lower()
    caption = markup_text(_apply(caption, "before"))
    caption = _apply(caption, "after")
    if len(_JOINERS.findall(caption)) > 3:
        caption = _JOINERS.sub(" ", caption)
    caption = html.unescape(html.unescape(fix_text(caption)))
    return _apply(caption, "repair").strip()


def clean_caption(caption: str) -> str:
    """The caption as diffusers' pipelines clean it (clean_caption=True): the cleaner, twice."""
    for _ in range(PASSES):
        caption = clean_once(caption)
    return caption


def require_cleaning() -> None:
    """Nothing when the cleaner's packages are installed, else CaptionCleaningUnavailable naming them and the pip
    command (for a loader that is asked to clean every prompt, before it loads anything)."""
    _libraries()
