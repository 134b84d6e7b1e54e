"""GGUF T5 files: the engine's torch dequantization against the gguf package's, llama.cpp names against the gguf
package's own name map, and the errors for files that cannot be used."""
import numpy as np
import pytest
import torch

from bench.fixtures.gguf_files import weight_bytes, with_unknown_quant_type, write_other_gguf, write_t5_gguf
from bench.fixtures.models import t5_state_dict, tiny_t5
from pixart_sigma_nodes.pixart.checkpoint.errors import CheckpointError
from pixart_sigma_nodes.pixart.checkpoint.files import read_checkpoint
from pixart_sigma_nodes.pixart.checkpoint.gguf_file import ARCHITECTURE_FIELD, GGUF_TYPE_SUFFIX, gguf_type_key
from pixart_sigma_nodes.pixart.checkpoint.gguf_quants import QUANT_TYPES, dequantize
from pixart_sigma_nodes.pixart.t5 import t5_config_from_weights, to_t5_state_dict

gguf = pytest.importorskip("gguf")


def _random_blocks(qtype: int, blocks: int, seed: int) -> np.ndarray:
    """Random bytes of `blocks` blocks, every fp16 scale field a finite value (as a quantizer writes)."""
    _, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(qtype)]
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, size=(blocks, type_size), dtype=np.uint8)
    scales = (rng.standard_normal((blocks, 2)) * 0.01).astype(np.float16).view(np.uint8)
    name = QUANT_TYPES[qtype][0]
    # where ggml puts each block's fp16 d (and dmin): at the start, or at the end for Q2_K, Q3_K and Q6_K
    starts = {"Q2_K": [type_size - 4, type_size - 2], "Q3_K": [type_size - 2], "Q6_K": [type_size - 2]}
    for index, start in enumerate(starts.get(name, [0, 2] if name in ("Q4_1", "Q5_1", "Q4_K", "Q5_K") else [0])):
        data[:, start:start + 2] = scales[:, 2 * index:2 * index + 2]
    return data


@pytest.mark.parametrize("qtype", sorted(QUANT_TYPES), ids=[QUANT_TYPES[t][0] for t in sorted(QUANT_TYPES)])
def test_torch_dequantization_equals_the_gguf_package(qtype):
    """Every written-out kernel gives the gguf package's values for every bit pattern it meets."""
    rows = _random_blocks(qtype, 24, seed=qtype).reshape(3, -1)  # 3 rows of 8 blocks
    expected = gguf.quants.dequantize(rows, gguf.GGMLQuantizationType(qtype))
    ours = dequantize(torch.from_numpy(rows), qtype)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, torch.from_numpy(expected).float(), rtol=1e-6, atol=1e-7)


def test_rows_dequantize_alone():
    """An embedding lookup dequantizes only its rows: the same values as those rows of the whole table."""
    table = gguf.quants.quantize(np.random.default_rng(1).standard_normal((10, 64)).astype(np.float32),
                                 gguf.GGMLQuantizationType.Q4_1)
    whole = dequantize(torch.from_numpy(table), 3)
    rows = torch.tensor([7, 2, 2])
    assert torch.equal(dequantize(torch.from_numpy(table)[rows], 3), whole[rows])


def test_types_without_a_kernel_fall_back_to_the_gguf_package():
    data = gguf.quants.quantize(np.random.default_rng(2).standard_normal((4, 256)).astype(np.float32),
                                gguf.GGMLQuantizationType.TQ2_0)
    expected = gguf.quants.dequantize(data, gguf.GGMLQuantizationType.TQ2_0)
    assert torch.equal(dequantize(torch.from_numpy(data), int(gguf.GGMLQuantizationType.TQ2_0)), torch.from_numpy(expected))


@pytest.fixture(scope="module")
def t5_weights():
    return t5_state_dict(tiny_t5())


@pytest.mark.parametrize("quant", ["Q8_0", "Q4_0", "F16"])
def test_llama_cpp_names_read_back_as_hugging_face_names(tmp_path, t5_weights, quant):
    """The file is named by gguf's own T5 name map; reading it gives every Hugging Face name back, the quantized
    weights as their bytes with their ggml type beside them, and the configuration of the model it came from."""
    path = str(tmp_path / f"t5-{quant}.gguf")
    twin = write_t5_gguf(t5_weights, path, quant)
    loaded = read_checkpoint(path, component="text_encoder")
    state_dict = to_t5_state_dict(loaded.state_dict, "t5.gguf", loaded.metadata[ARCHITECTURE_FIELD])
    weights = {k: v for k, v in state_dict.items() if not k.endswith(GGUF_TYPE_SUFFIX)}
    assert set(weights) == set(t5_weights)
    assert t5_config_from_weights(state_dict, "t5.gguf")["d_model"] == 32
    for key, tensor in weights.items():
        type_key = gguf_type_key(key)
        values = dequantize(tensor, int(state_dict[type_key])) if type_key in state_dict else tensor.float()
        assert torch.equal(values, twin[key]), key
    quantized = [k for k in weights if gguf_type_key(k) in state_dict]
    assert (len(quantized) > 0) == (quant != "F16")
    assert sum(t.nbytes for k, t in state_dict.items() if not k.endswith(GGUF_TYPE_SUFFIX)) == weight_bytes(path)


def test_files_that_are_not_t5_encoders_are_named(tmp_path, t5_weights):
    unet = str(tmp_path / "flux-dev-Q8_0.gguf")
    write_other_gguf(unet, "flux")
    loaded = read_checkpoint(unet)
    with pytest.raises(CheckpointError, match=r"flux-dev-Q8_0.gguf is a GGUF 'flux' model \(2 tensors\), not a T5"):
        to_t5_state_dict(loaded.state_dict, "flux-dev-Q8_0.gguf", loaded.metadata[ARCHITECTURE_FIELD])

    good = str(tmp_path / "t5.gguf")
    write_t5_gguf(t5_weights, good, "Q8_0")
    truncated = tmp_path / "t5-truncated.gguf"
    truncated.write_bytes(open(good, "rb").read()[: 40_000])
    with pytest.raises(CheckpointError, match=r"t5-truncated.gguf \(40,000 bytes\) is not a readable GGUF file"):
        read_checkpoint(str(truncated))
    unknown = str(tmp_path / "t5-unknown-type.gguf")
    with_unknown_quant_type(good, unknown)
    with pytest.raises(CheckpointError, match=r"t5-unknown-type.gguf holds a tensor of a quantization type the "
                                              r"installed gguf package does not know"):
        read_checkpoint(unknown)


def test_without_the_gguf_package_a_gguf_choice_names_the_package_and_the_command(tmp_path, t5_weights, monkeypatch):
    path = str(tmp_path / "t5-Q8_0.gguf")
    write_t5_gguf(t5_weights, path, "Q8_0")
    monkeypatch.setitem(__import__("sys").modules, "gguf", None)  # what `import gguf` meets where it is not installed
    with pytest.raises(CheckpointError, match=r"need the 'gguf' package.*python -m pip install gguf"):
        read_checkpoint(path, component="text_encoder")
