"""Turn API-format workflows into UI-format ones (what ComfyUI's template browser and 'Open' load), using a
running ComfyUI's /object_info for each node's widgets, sockets and outputs. Every node whose widgets select a published
model file declares it (name, download URL, folder) in `properties.models` from tools/published_models.py, so the
frontend lists the files an install lacks with download buttons.

    python tools/api_to_ui.py --server http://127.0.0.1:8188 example_workflows/api/*.json --out example_workflows
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from published_models import DIFFUSERS_PREFIX, REPOS, declarations  # noqa: E402

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _inputs(info: dict) -> list[tuple[str, object, dict]]:
    spec = info["input"]
    order = info.get("input_order") or {k: list(v) for k, v in spec.items() if k != "hidden"}
    rows = []
    for group in ("required", "optional"):
        for name in order.get(group, []):
            entry = spec[group][name]
            rows.append((name, entry[0], entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}))
    return rows


def _is_widget(kind) -> bool:
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _columns(prompt: dict) -> dict[str, int]:
    column: dict[str, int] = {}

    def depth(node_id: str) -> int:
        if node_id not in column:
            sources = [v[0] for v in prompt[node_id]["inputs"].values() if isinstance(v, list)]
            column[node_id] = 1 + max((depth(str(s)) for s in sources), default=-1)
        return column[node_id]

    for node_id in prompt:
        depth(node_id)
    return column


def _declared_models(widgets: list) -> list[dict]:
    """properties.models of a node: its published files; a diffusers folder must be a listed repository."""
    for value in widgets:
        if isinstance(value, str) and value.startswith(DIFFUSERS_PREFIX) and value not in REPOS:
            raise KeyError(f"{value!r} is neither a published file nor a listed diffusers repository "
                           "(tools/published_models.py)")
    return declarations(widgets)


def api_to_ui(prompt: dict, object_info: dict) -> dict:
    if all(node_id.isdigit() for node_id in prompt):  # keep the API ids, so the two formats line up
        ids = {node_id: int(node_id) for node_id in prompt}
    else:
        ids = {node_id: index + 1 for index, node_id in enumerate(sorted(prompt, key=lambda k: (len(k), k)))}
    columns = _columns(prompt)
    rows_used: dict[int, int] = {}
    nodes, links = [], []
    outputs: dict[int, list[dict]] = {}
    for node_id, node in prompt.items():
        info = object_info[node["class_type"]]
        outputs[ids[node_id]] = [{"name": name, "type": kind, "links": [], "slot_index": slot}
                                 for slot, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
    for order, (node_id, node) in enumerate(sorted(prompt.items(), key=lambda item: (columns[item[0]], ids[item[0]]))):
        info = object_info[node["class_type"]]
        col = columns[node_id]
        row = rows_used.get(col, 0)
        rows_used[col] = row + 1
        sockets, widgets = [], []
        for name, kind, options in _inputs(info):
            value = node["inputs"].get(name)
            if isinstance(value, list):  # a link
                link_id = len(links) + 1
                source = ids[str(value[0])]
                slot = int(value[1])
                out_type = outputs[source][slot]["type"]
                links.append([link_id, source, slot, ids[node_id], len(sockets), out_type])
                outputs[source][slot]["links"].append(link_id)
                sockets.append({"name": name, "type": out_type if not _is_widget(kind) else kind, "link": link_id})
            elif _is_widget(kind):
                widgets.append(value if value is not None else options.get("default"))
                if options.get("control_after_generate"):
                    widgets.append("fixed")
            elif value is None:
                sockets.append({"name": name, "type": kind, "link": None})
        properties = {"Node name for S&R": node["class_type"]}
        models = _declared_models(widgets)
        if models:
            properties["models"] = models
        nodes.append({"id": ids[node_id], "type": node["class_type"], "pos": [60 + col * 380, 60 + row * 260],
                      "size": [340, 200], "flags": {}, "order": order, "mode": 0, "inputs": sockets,
                      "outputs": outputs[ids[node_id]], "properties": properties, "widgets_values": widgets})
    return {"last_node_id": max(ids.values()), "last_link_id": len(links), "nodes": nodes, "links": links, "groups": [],
            "config": {}, "extra": {}, "version": 0.4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--server", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("workflows", nargs="+")
    args = parser.parse_args()
    with urllib.request.urlopen(args.server.rstrip("/") + "/object_info", timeout=60) as response:
        object_info = json.loads(response.read())
    for path in args.workflows:
        with open(path, encoding="utf-8") as fh:
            prompt = json.load(fh)
        target = os.path.join(args.out, os.path.basename(path))
        with open(target, "w", encoding="utf-8") as fh:
            json.dump(api_to_ui(prompt, object_info), fh, indent=2)
        print(target)


if __name__ == "__main__":
    main()
