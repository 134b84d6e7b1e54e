"""Reading tensors from files and folders, safely.

Pickle-based files (.pth/.pt/.bin/.ckpt) are read with `torch.load(weights_only=True)`: only tensors and
plain containers are rebuilt, never arbitrary objects or calls. Safetensors files carry no code at all.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import zipfile
from dataclasses import dataclass, field

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .errors import CheckpointError
from .gguf_file import GGUF_EXT, read_gguf

log = logging.getLogger(__name__)

SAFETENSORS_EXT = (".safetensors", ".sft")
PICKLE_EXT = (".pth", ".pt", ".bin", ".ckpt")
# Containers that wrap the weights in published and trainer-saved pickles, most preferred first.
_WRAPPER_KEYS = ("state_dict", "state_dict_ema", "ema", "model", "module")


@dataclass
class LoadedTensors:
    """Tensors of one checkpoint plus what the files said about them."""

    state_dict: dict[str, torch.Tensor]
    source: str  # path shown in messages
    config: dict = field(default_factory=dict)  # diffusers config.json, when there is one
    pipeline_class: str | None = None  # model_index.json's _class_name, when there is one
    metadata: dict[str, str] = field(default_factory=dict)  # safetensors header metadata (e.g. quantization)


def stored_dtype(state_dict: dict[str, torch.Tensor]) -> torch.dtype:
    """The floating-point dtype that holds most of the weights (what the file was saved in)."""
    counts: dict[torch.dtype, int] = {}
    for tensor in state_dict.values():
        if tensor.is_floating_point():
            counts[tensor.dtype] = counts.get(tensor.dtype, 0) + tensor.numel()
    return max(counts, key=counts.get) if counts else torch.float32


def read_tensor_metadata(path: str) -> dict[str, str]:
    """The string metadata in a .safetensors header (empty for pickles and files without any)."""
    if not path.lower().endswith(SAFETENSORS_EXT):
        return {}
    try:
        with safe_open(path, framework="pt") as handle:
            return dict(handle.metadata() or {})
    except (SafetensorError, OSError, ValueError):
        return {}  # read_tensor_file reports an unreadable file with its own message


def read_tensor_file(path: str) -> dict[str, torch.Tensor]:
    """Read one .safetensors or pickle checkpoint into a flat {name: tensor} dict."""
    name = os.path.basename(path)
    size = _check_file(path)
    if path.lower().endswith(SAFETENSORS_EXT):
        return _read_safetensors(path, name, size)
    if path.lower().endswith(PICKLE_EXT):
        return _read_pickle(path, name)
    raise CheckpointError(f"{name}: unknown weight format; expected .safetensors, .pth, .pt, .bin or .ckpt.")


def _check_file(path: str) -> int:
    """The file's size; a missing or empty file is a CheckpointError."""
    name = os.path.basename(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"{name}: no such file ({path}).")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"{name} is empty (0 bytes): the download or copy did not finish. Fetch the file again.")
    return size


def _read_safetensors(path: str, name: str, size: int) -> dict[str, torch.Tensor]:
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(
            f"{name} ({size:,} bytes) is not a readable safetensors file ({err}). It is probably truncated or "
            "corrupt: download it again and compare its size with the published one."
        ) from err


def _read_pickle(path: str, name: str) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{name} was refused: it is a pickle that asks to build objects or call functions beyond plain "
            f"tensors ({first_line}). Such files can run code, so they are never unpickled here. Convert it "
            "to .safetensors in a trusted environment, or use the published .safetensors/.pth."
        ) from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        raise CheckpointError(
            f"{name} could not be read as a PyTorch checkpoint ({type(err).__name__}: {err}). It is probably "
            "truncated or corrupt: download it again."
        ) from err
    return _unwrap(obj, name)


def _unwrap(obj, name: str) -> dict[str, torch.Tensor]:
    """Find the flat tensor dict inside {"state_dict": ...}-style containers."""
    for _ in range(3):
        if not isinstance(obj, dict):
            break
        if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        inner = next((obj[k] for k in _WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    if isinstance(obj, dict):
        tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
        if tensors:
            return tensors
    raise CheckpointError(f"{name} holds no tensors at its top level or under 'state_dict'; it is not a model checkpoint.")


def read_diffusers_folder(folder: str, component: str) -> LoadedTensors:
    """Read a diffusers model folder (config.json + weights, sharded or not), or a repo folder holding one.

    `component` is the subfolder name in a full repo, e.g. "transformer" or "text_encoder".
    """
    model_dir = folder
    if not os.path.isfile(os.path.join(model_dir, "config.json")) and os.path.isdir(os.path.join(folder, component)):
        model_dir = os.path.join(folder, component)
    name = os.path.basename(os.path.normpath(folder))
    config_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(config_path):
        raise CheckpointError(
            f"{name}: no config.json in {model_dir}. A diffusers folder needs its config.json beside the weights; "
            "copy the whole folder from the published repository."
        )
    try:
        with open(config_path, encoding="utf-8") as fh:
            config = json.load(fh)
    except (OSError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{name}: config.json is not valid JSON ({err}); copy it again.") from err
    state_dict: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for shard in _weight_files(model_dir, name):
        state_dict.update(read_tensor_file(shard))
        metadata.update(read_tensor_metadata(shard))
    return LoadedTensors(state_dict, source=model_dir, config=config,
                         pipeline_class=_pipeline_class(model_dir), metadata=metadata)


def _weight_files(model_dir: str, name: str) -> list[str]:
    files = sorted(os.listdir(model_dir))
    for ext in (".safetensors", ".bin"):
        index = next((f for f in files if f.endswith(ext + ".index.json")), None)
        if index is not None:
            with open(os.path.join(model_dir, index), encoding="utf-8") as fh:
                weight_map = json.load(fh).get("weight_map", {})
            shards = sorted(set(weight_map.values()))
            missing = [s for s in shards if not os.path.isfile(os.path.join(model_dir, s))]
            if missing:
                raise CheckpointError(f"{name}: shards {missing} named in {index} are missing; copy them too.")
            return [os.path.join(model_dir, s) for s in shards]
        singles = [f for f in files if f.endswith(ext) and not f.endswith(".index.json")]
        if singles:
            # Prefer the plain file over variants such as *.fp16.safetensors when both exist.
            singles.sort(key=lambda f: (f.count("."), f))
            return [os.path.join(model_dir, singles[0])]
    raise CheckpointError(f"{name}: no .safetensors or .bin weights in {model_dir}.")


def _pipeline_class(model_dir: str) -> str | None:
    index = os.path.join(os.path.dirname(os.path.normpath(model_dir)), "model_index.json")
    try:
        with open(index, encoding="utf-8") as fh:
            return json.load(fh).get("_class_name")
    except (OSError, json.JSONDecodeError):
        return None


def read_checkpoint(path: str, component: str = "transformer") -> LoadedTensors:
    """A single weight file or a diffusers folder -> LoadedTensors (a GGUF file: metadata holds its architecture)."""
    if os.path.isdir(path):
        return read_diffusers_folder(path, component)
    if path.lower().endswith(GGUF_EXT):
        _check_file(path)
        state_dict, metadata = read_gguf(path)
        return LoadedTensors(state_dict, source=path, metadata=metadata)
    return LoadedTensors(read_tensor_file(path), source=path, metadata=read_tensor_metadata(path))
