"""GGML block quantization (the quant types of GGUF files), dequantized with torch on whatever device the bytes are.

A quantized row is a run of blocks; each block holds `block_size` values in `type_size` bytes (scales first or
last, as ggml lays them out). Rows are independent, so any subset of rows (an embedding lookup) dequantizes alone.
The types published T5 GGUF files use (Q8_0, Q4_0/1, Q5_0/1, Q2_K..Q6_K) are written out here; any other type the
`gguf` package knows is dequantized by that package on the CPU (slower, same values).
"""
from __future__ import annotations

import torch

# ggml type id -> (name, values per block, bytes per block); ids are ggml's (GGMLQuantizationType).
QUANT_TYPES: dict[int, tuple[str, int, int]] = {
    2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20), 6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210),
}


def _f16(blocks: torch.Tensor, start: int) -> torch.Tensor:
    """The little-endian fp16 at byte `start` of each block -> (n_blocks, 1) float32."""
    return blocks[:, start:start + 2].contiguous().view(torch.float16).float()


def _nibbles(packed: torch.Tensor) -> torch.Tensor:
    """(n, k) bytes -> (n, 2, k): low nibbles, then high nibbles (ggml's order within a 32-byte run)."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=1)


def _bits(packed: torch.Tensor, count: int) -> torch.Tensor:
    """(n, k) bytes -> (n, count, k): bit i of every byte."""
    shifts = torch.arange(count, device=packed.device, dtype=torch.uint8).view(1, count, 1)
    return (packed.unsqueeze(1) >> shifts) & 1


def _q4_0(b):  # d, qs[16]
    q = _nibbles(b[:, 2:18]).reshape(-1, 32).float() - 8
    return _f16(b, 0) * q


def _q4_1(b):  # d, m, qs[16]
    return _f16(b, 0) * _nibbles(b[:, 4:20]).reshape(-1, 32).float() + _f16(b, 2)


def _q5_high(qh: torch.Tensor) -> torch.Tensor:
    """(n, 4) bytes of a 32-bit mask -> (n, 32): bit j for value j."""
    return _bits(qh, 8).permute(0, 2, 1).reshape(-1, 32)


def _q5_0(b):  # d, qh[4], qs[16]
    q = _nibbles(b[:, 6:22]).reshape(-1, 32) | (_q5_high(b[:, 2:6]) << 4)
    return _f16(b, 0) * (q.float() - 16)


def _q5_1(b):  # d, m, qh[4], qs[16]
    q = _nibbles(b[:, 8:24]).reshape(-1, 32) | (_q5_high(b[:, 4:8]) << 4)
    return _f16(b, 0) * q.float() + _f16(b, 2)


def _q8_0(b):  # d, qs int8[32]
    return _f16(b, 0) * b[:, 2:34].contiguous().view(torch.int8).float()


def _crumbs(packed: torch.Tensor) -> torch.Tensor:
    """(n, 32k) bytes -> (n, 4k*32): 2-bit fields, for each 32-byte run shifts 0, 2, 4, 6 in turn."""
    n, length = packed.shape
    runs = packed.view(n, length // 32, 1, 32)
    shifts = torch.tensor([0, 2, 4, 6], device=packed.device, dtype=torch.uint8).view(1, 1, 4, 1)
    return ((runs >> shifts) & 3).reshape(n, -1)


def _q2_k(b):  # scales[16] (low 4 bits scale, high 4 bits min), qs[64], d, dmin
    scales = b[:, 0:16]
    q = _crumbs(b[:, 16:80]).float().view(-1, 16, 16)  # 16 groups of 16 values
    d = _f16(b, 80).unsqueeze(-1) * (scales & 0x0F).float().unsqueeze(-1)
    m = _f16(b, 82).unsqueeze(-1) * (scales >> 4).float().unsqueeze(-1)
    return (d * q - m).reshape(-1, 256)


def _q3_k_scales(s: torch.Tensor) -> torch.Tensor:
    """12 bytes -> 16 signed 6-bit scales: low 4 bits from bytes 0-7 (low, then high nibbles), high 2 bits from
    bytes 8-11 (group i takes bits 2*(i//4) of byte 8 + i%4)."""
    low = torch.cat([s[:, 0:8] & 0x0F, s[:, 0:8] >> 4], dim=1)
    high = torch.cat([(s[:, 8:12] >> shift) & 3 for shift in (0, 2, 4, 6)], dim=1)
    return (low | (high << 4)).float() - 32


def _q3_k(b):  # hmask[32], qs[64], scales[12], d
    low = _crumbs(b[:, 32:96]).view(-1, 8, 32)  # 8 runs of 32 values (2 chunks x 4 shifts)
    high = _bits(b[:, 0:32], 8)  # (n, 8, 32): bit r of hmask byte l -> run r, value l
    q = low.float() - 4 * (1 - high.float())
    scales = _q3_k_scales(b[:, 96:108]).view(-1, 8, 2).repeat_interleave(16, dim=2)
    return (_f16(b, 108).unsqueeze(-1) * scales * q).reshape(-1, 256)


def _k4_scales(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """12 bytes -> 8 six-bit (scale, min) pairs, as ggml's K-quants of 4 and 5 bits pack them."""
    first_scale, first_min = s[:, 0:4] & 63, s[:, 4:8] & 63
    last_scale = (s[:, 8:12] & 0x0F) | ((s[:, 0:4] >> 6) << 4)
    last_min = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    return torch.cat([first_scale, last_scale], 1).float(), torch.cat([first_min, last_min], 1).float()


def _k4_apply(b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """q: (n, 8, 32) values of the 8 sub-blocks -> d*scale*q - dmin*min."""
    scale, minimum = _k4_scales(b[:, 4:16])
    d = _f16(b, 0) * scale
    m = _f16(b, 2) * minimum
    return (d.unsqueeze(-1) * q - m.unsqueeze(-1)).reshape(-1, 256)


def _q4_k(b):  # d, dmin, scales[12], qs[128]
    q = _nibbles(b[:, 16:144].reshape(-1, 32)).view(-1, 4, 2, 32).reshape(-1, 8, 32)
    return _k4_apply(b, q.float())


def _q5_k(b):  # d, dmin, scales[12], qh[32], qs[128]
    low = _nibbles(b[:, 48:176].reshape(-1, 32)).view(-1, 8, 32)
    high = _bits(b[:, 16:48], 8)  # bit s of qh byte l -> sub-block s, value l
    return _k4_apply(b, (low | (high << 4)).float())


def _q6_k(b):  # ql[128], qh[64], scales int8[16], d
    n = b.shape[0]
    ql = b[:, 0:128].reshape(n, 2, 2, 32)  # chunk, half, value
    low = torch.stack([ql[:, :, 0] & 0x0F, ql[:, :, 1] & 0x0F, ql[:, :, 0] >> 4, ql[:, :, 1] >> 4], dim=2)
    qh = b[:, 128:192].reshape(n, 2, 1, 32)
    high = (qh >> torch.tensor([0, 2, 4, 6], device=b.device, dtype=torch.uint8).view(1, 1, 4, 1)) & 3
    q = (low | (high << 4)).float() - 32  # (n, 2 chunks, 4 runs, 32)
    scales = b[:, 192:208].contiguous().view(torch.int8).float().view(n, 2, 4, 2).repeat_interleave(16, dim=3)
    return (_f16(b, 208).view(n, 1, 1, 1) * scales * q).reshape(-1, 256)


_KERNELS = {2: _q4_0, 3: _q4_1, 6: _q5_0, 7: _q5_1, 8: _q8_0, 10: _q2_k, 11: _q3_k, 12: _q4_k, 13: _q5_k, 14: _q6_k}


def quant_sizes(qtype: int) -> tuple[int, int]:
    """(values per block, bytes per block) of a ggml type, from this table or the gguf package."""
    if qtype in QUANT_TYPES:
        return QUANT_TYPES[qtype][1:]
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]


def logical_shape(raw_shape: tuple[int, ...], qtype: int) -> tuple[int, ...]:
    """(..., bytes per row) of a quantized tensor -> (..., values per row)."""
    block_size, type_size = quant_sizes(qtype)
    return (*raw_shape[:-1], raw_shape[-1] // type_size * block_size)


def dequantize(raw: torch.Tensor, qtype: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """raw: (..., bytes per row) uint8 of ggml type `qtype` -> (..., values per row) in `dtype`, on raw's device."""
    shape = logical_shape(tuple(raw.shape), qtype)
    _, type_size = quant_sizes(qtype)
    kernel = _KERNELS.get(qtype)
    if kernel is not None:
        values = kernel(raw.reshape(-1, type_size))  # (n_blocks, block_size) float32
    else:
        values = _dequantize_with_gguf(raw, qtype)
    return values.reshape(shape).to(dtype)


def _dequantize_with_gguf(raw: torch.Tensor, qtype: int) -> torch.Tensor:
    import gguf

    values = gguf.quants.dequantize(raw.cpu().numpy(), gguf.GGMLQuantizationType(qtype))
    return torch.from_numpy(values).float().to(raw.device)


def quant_name(qtype: int) -> str:
    if qtype in QUANT_TYPES:
        return QUANT_TYPES[qtype][0]
    try:
        import gguf

        return gguf.GGMLQuantizationType(qtype).name
    except (ImportError, ValueError):
        return f"type {qtype}"
