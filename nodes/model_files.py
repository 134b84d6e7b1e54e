"""Model choices shown in the loaders: files from ComfyUI's model folders and diffusers folders.

Diffusers repos under models/diffusers/<repo>/ appear as 'diffusers/<repo>' when they hold the wanted
component folder (transformer/ or text_encoder/). Where a loader reads GGUF (the T5 loader), .gguf files in the
folder's paths are listed too (ComfyUI's own lists leave that extension out). Every name resolves only through these
lists.
"""
from __future__ import annotations

import os

import folder_paths

DIFFUSERS_PREFIX = "diffusers/"
GGUF_EXTENSIONS = (".gguf",)


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


def gguf_files(folder_name: str) -> dict[str, str]:
    """.gguf files under the folder's paths (found with ComfyUI's own search), relative name -> path."""
    files = {}
    for root in folder_paths.get_folder_paths(folder_name):
        if not os.path.isdir(root):
            continue
        found, _ = folder_paths.recursive_search(root, excluded_dir_names=[".git"])
        for name in sorted(folder_paths.filter_files_extensions(found, GGUF_EXTENSIONS)):
            files.setdefault(name, os.path.join(root, name))
    return files


def choices(folder_name: str, component: str, gguf: bool = False) -> list[str]:
    names = list(folder_paths.get_filename_list(folder_name))
    if gguf:
        names += sorted(set(gguf_files(folder_name)) - set(names))
    return names + list(diffusers_repos(component))


def resolve(folder_name: str, component: str, name: str, gguf: bool = False) -> str:
    """A listed name -> its path; anything not listed is refused (no path from user input is opened)."""
    path = folder_paths.get_full_path(folder_name, name)
    if path is None and gguf:
        path = gguf_files(folder_name).get(name)
    if path is None:
        path = diffusers_repos(component).get(name)
    if path is None:
        raise FileNotFoundError(
            f"'{name}' is not among the models in ComfyUI's '{folder_name}' folder or models/diffusers/*/{component}. "
            "Put the file there and refresh the page (press R).")
    return path
