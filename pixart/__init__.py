"""PixArt-Σ / PixArt-α engine: model, checkpoints, KV compression, schedules, text and resolution rules.

Pure torch; never imports ComfyUI. The `nodes` package adapts it to ComfyUI.
"""
from .checkpoint import CheckpointError, load_dit, read_dit_weights
from .config import ALPHA, SIGMA, DiTConfig
from .dit import PixArtDiT
from .kv_compress import KVCompress, KVCompressError, parse_layers

__all__ = [
    "ALPHA", "SIGMA", "CheckpointError", "DiTConfig", "KVCompress", "KVCompressError", "PixArtDiT",
    "load_dit", "parse_layers", "read_dit_weights",
]
