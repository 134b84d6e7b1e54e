"""API-mode batch client for ComfyUI: many prompts, one workflow, one or more servers."""
