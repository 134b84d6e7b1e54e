"""The `control` dict ComfyUI passes to a diffusion model, as PixArt reads it: UNet ControlNets fill the lists under
UNET_CONTROL_KEYS with residuals; PixArt ControlNets (nodes/controlnet.py) put pixart.controlnet.ControlInputs under
PIXART_CONTROL, for the DiT to run beside its blocks."""
UNET_CONTROL_KEYS = ("input", "middle", "output")
PIXART_CONTROL = "pixart_control"
