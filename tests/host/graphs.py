"""API-format graphs shared by the host-tier tests."""


def text_to_image(dit_name: str, t5_name: str, seed: int = 1, prefix: str = "pixart") -> dict:
    return {
        "t5": {"class_type": "PixArtT5Loader",
               "inputs": {"t5_name": t5_name, "dtype": "default", "device": "default", "caption_length": "sigma_300"}},
        "pos": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["t5", 0], "text": "A photo of a cat riding the moon"}},
        "neg": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["t5", 0], "text": ""}},
        "dit": {"class_type": "PixArtDiTLoader", "inputs": {"dit_name": dit_name, "weight_dtype": "default"}},
        "latent": {"class_type": "EmptyLatentImage", "inputs": {"width": 128, "height": 96, "batch_size": 1}},
        "sample": {"class_type": "KSampler",
                   "inputs": {"model": ["dit", 0], "positive": ["pos", 0], "negative": ["neg", 0],
                              "latent_image": ["latent", 0], "seed": seed, "steps": 3, "cfg": 4.5,
                              "sampler_name": "dpmpp_2m", "scheduler": "normal", "denoise": 1.0}},
        "vae": {"class_type": "VAELoader", "inputs": {"vae_name": "vae-tiny.safetensors"}},
        "decode": {"class_type": "VAEDecode", "inputs": {"samples": ["sample", 0], "vae": ["vae", 0]}},
        "save": {"class_type": "SaveImage", "inputs": {"images": ["decode", 0], "filename_prefix": prefix}},
    }
