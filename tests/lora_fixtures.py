"""PEFT LoRAs on the tiny diffusers PixArt transformer, and the same LoRA in other published layouts."""
from __future__ import annotations

import copy

import torch

# Every Linear/Conv a PEFT LoRA on PixArtTransformer2DModel can target: attention (attn1, attn2), feed-forward,
# caption projection, timestep/size embedders and adaLN (linear_1/linear_2/linear), output and patch projections.
ALL_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2", "linear_1", "linear_2", "linear",
               "proj_out", "pos_embed.proj"]
ATTN_FF_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "ff.net.0.proj", "ff.net.2"]


def peft_lora(model, targets, rank: int = 4, seed: int = 0):
    """(model with the adapter injected, PEFT state dict with random A and B). alpha = rank (scale 1)."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model

    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=targets, init_lora_weights=False)
    adapted = inject_adapter_in_model(config, copy.deepcopy(model))
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        for name, param in adapted.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return adapted, {k: v.detach().clone().contiguous() for k, v in get_peft_model_state_dict(adapted).items()}


def merged(adapted, strength: float):
    """diffusers' transformer with the PEFT adapter merged at `strength` (PEFT's own merge)."""
    from peft.tuners.lora import LoraLayer

    model = copy.deepcopy(adapted)
    for module in model.modules():
        if isinstance(module, LoraLayer):
            module.set_scale("default", strength)
            module.merge()
    return model


def onetrainer_layout(peft_state: dict[str, torch.Tensor], rank: int) -> dict[str, torch.Tensor]:
    """The same LoRA as OneTrainer saves it: lora_transformer_<module_with_underscores>.lora_down/up + alpha."""
    out = {}
    for key, tensor in peft_state.items():
        module, part = key.rsplit(".lora_", 1)
        name = "lora_transformer_" + module.replace(".", "_")
        out[f"{name}.lora_{'down' if part.startswith('A') else 'up'}.weight"] = tensor
        out[f"{name}.alpha"] = torch.tensor(float(rank))
    return out
