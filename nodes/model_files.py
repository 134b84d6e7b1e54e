"""Model choices shown in the loaders: files from ComfyUI's model folders and diffusers folders.

Diffusers repos under models/diffusers/<repo>/ appear as 'diffusers/<repo>' when they hold the wanted
component folder (transformer/ or text_encoder/). Every name resolves only through these lists.
"""
from __future__ import annotations

import os

import folder_paths

DIFFUSERS_PREFIX = "diffusers/"


def diffusers_repos(component: str) -> dict[str, str]:
    repos = {}
    for root in folder_paths.get_folder_paths("diffusers"):
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            folder = os.path.join(root, name, component)
            if os.path.isdir(folder):  # listed even when incomplete, so loading can say what is missing
                repos.setdefault(DIFFUSERS_PREFIX + name, folder)
    return repos


def choices(folder_name: str, component: str) -> list[str]:
    return list(folder_paths.get_filename_list(folder_name)) + list(diffusers_repos(component))


def resolve(folder_name: str, component: str, name: str) -> str:
    """A listed name -> its path; anything not listed is refused (no path from user input is opened)."""
    path = folder_paths.get_full_path(folder_name, name)
    if path is None:
        path = diffusers_repos(component).get(name)
    if path is None:
        raise FileNotFoundError(
            f"'{name}' is not among the models in ComfyUI's '{folder_name}' folder or models/diffusers/*/{component}. "
            "Put the file there and refresh the page (press R).")
    return path
