import importlib.abc
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # bench.fixtures and batch_client; the engine is imported only as pixart_sigma_nodes.pixart
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench.fixtures.models import save_all_layouts, tiny_transformer  # noqa: E402
from bench.fixtures.pack import import_pack  # noqa: E402

import_pack()


class OneEngineName(importlib.abc.MetaPathFinder):
    """Refuses the engine's top-level name: one process holds one copy of the engine (one PixArtDiT class), imported
    as pixart_sigma_nodes.pixart, the way ComfyUI imports it as a subpackage of the pack."""

    def find_spec(self, name, path=None, target=None):
        if name == "pixart" or name.startswith("pixart."):
            raise ImportError(f"'{name}': import the engine as pixart_sigma_nodes.{name} (one name per process)")
        return None


sys.meta_path.insert(0, OneEngineName())

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class TinyCheckpoint:
    """A random-weight diffusers reference model and the files it was saved as."""

    def __init__(self, model, null_caption, paths, tokens):
        self.model = model
        self.null_caption = null_caption
        self.paths = paths
        self.tokens = tokens


def _make(tmp_path_factory, family, micro, name, pipeline_class, seed):
    model, null = tiny_transformer(family, micro, seed=seed)
    folder = tmp_path_factory.mktemp(name)
    paths = save_all_layouts(model, null, str(folder), name, pipeline_class)
    return TinyCheckpoint(model, null, paths, 300 if family == "sigma" else 120)


@pytest.fixture(scope="session")
def sigma_ckpt(tmp_path_factory):
    return _make(tmp_path_factory, "sigma", False, "PixArt-Sigma-XL-2-1024-MS", "PixArtSigmaPipeline", seed=0)


@pytest.fixture(scope="session")
def alpha_ckpt(tmp_path_factory):
    return _make(tmp_path_factory, "alpha", True, "PixArt-XL-2-1024-MS", "PixArtAlphaPipeline", seed=10)


@pytest.fixture(scope="session")
def tiny_tokenizer(tmp_path_factory):
    """A T5-style (Unigram, metaspace, EOS=1, pad=0) tokenizer with a small vocabulary, saved like HF does."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import T5TokenizerFast

    words = ("a photo of cat dog on the moon red blue big small astronaut riding horse in space with "
             "painting oil city night").split()
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab += [("▁" + w, -float(i + 1)) for i, w in enumerate(words)]
    vocab += [(c, -20.0) for c in "abcdefghijklmnopqrstuvwxyz"] + [("▁", -30.0)]
    backend = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tokenizer = T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", pad_token="<pad>",
                                unk_token="<unk>", extra_ids=0)
    folder = tmp_path_factory.mktemp("tokenizer")
    tokenizer.save_pretrained(str(folder))
    return tokenizer, backend, str(folder)
