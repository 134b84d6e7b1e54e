"""Host tier: every node of the pack has help the frontend can fetch (web/docs/<node id>.md, served under
/extensions/<pack folder>/docs/), generated from the schemas the server reports, so help and tooltips cannot
disagree; and the nodes carry search aliases where the host's schema has them. Iterates over every node the server
lists for this pack."""
import os
import re
import urllib.request

import pytest

from bench.fixtures.pack import ROOT
from host.comfy_host import require_comfyui
from tools.node_docs import END_MARK, PACK_FOLDER, RECIPE_HEADING, pack_nodes, schema_inputs, stale

require_comfyui()
DOCS = os.path.join(ROOT, "web", "docs")
# What users type to find PixArt nodes, and a node each word must find (in name, display name or search aliases)
SEARCH_WORDS = {"T5": "PixArtT5Loader", "DiT": "PixArtDiTLoader", "KSampler": "PixArtKVSampler",
                "sampler": "PixArtKVSampler", "empty latent": "PixArtEmptyLatent", "resolution": "PixArtEmptyLatent",
                "pixart": "PixArtT5Loader"}


@pytest.fixture(scope="module")
def nodes(server):
    found = pack_nodes(server.get("/object_info"), PACK_FOLDER)
    assert {"PixArtT5Loader", "PixArtDiTLoader", "PixArtKVSampler", "PixArtEmptyLatent"} <= set(found), found
    return found


def _help(node_id: str) -> str:
    with open(os.path.join(DOCS, f"{node_id}.md"), encoding="utf-8") as fh:
        return fh.read()


def _table(text: str, heading: str) -> list[str]:
    """The names in the first column of the table under `heading`."""
    section = text.split(heading, 1)[1].split("\n## ", 1)[0]
    return re.findall(r"^\| `([^`]+)`", section, flags=re.M)


def test_help_files_are_current(nodes, server):
    """web/docs holds exactly one file per node, each equal to what tools/node_docs.py writes from this schema."""
    files = sorted(f[:-3] for f in os.listdir(DOCS) if f.endswith(".md"))
    assert files == sorted(nodes)
    out_of_date = stale(server.get("/object_info"), PACK_FOLDER)
    assert out_of_date == [], f"run python tools/node_docs.py --server URL; out of date: {out_of_date}"
    print(f"\n{len(files)} help files current: {files}")


def test_help_names_every_input_and_no_other(nodes):
    for node_id, info in nodes.items():
        text = _help(node_id)
        inputs = [name for name, _, _, _ in schema_inputs(info)]
        documented = _table(text, "## Inputs")
        assert documented == inputs, f"{node_id}: help lists {documented}, schema has {inputs}"
        assert _table(text, "## Outputs") == info["output_name"], node_id
        for name, _, options, _ in schema_inputs(info):
            assert (options.get("tooltip") or "").strip(), f"{node_id}.{name} has no tooltip, so no help"
        assert all(info.get("output_tooltips") or [None]), f"{node_id}: an output has no tooltip"
        recipe = text.split(END_MARK, 1)[1].split(RECIPE_HEADING, 1)[1].strip()
        assert len(recipe) > 80, f"{node_id}: write the recipe for the best result"


def test_help_is_served_where_the_frontend_fetches_it(server, nodes):
    for node_id in nodes:
        with urllib.request.urlopen(f"{server.url}/extensions/{PACK_FOLDER}/docs/{node_id}.md", timeout=30) as response:
            assert "text/html" not in response.headers.get("content-type", "")
            assert response.read().decode() == _help(node_id)


def test_search_words_find_the_nodes(server, nodes):
    """Where the host's schema has search aliases (it lists them for core nodes too), every PixArt node has some and
    the words users type find the node they mean; on older hosts the nodes load without them."""
    host_has_aliases = "search_aliases" in server.get("/object_info")["KSamplerAdvanced"]
    for word, node_id in SEARCH_WORDS.items():
        info = nodes[node_id]
        fields = [node_id, info["display_name"]] + (info.get("search_aliases") or [])
        hit = any(word.lower() in field.lower() for field in fields)
        if host_has_aliases:
            assert hit, f"{word!r} does not find {node_id}: {fields}"
    if host_has_aliases:
        assert all(info.get("search_aliases") for info in nodes.values())
    else:
        assert not any(info.get("search_aliases") for info in nodes.values())
    print(f"\nhost schema has search_aliases: {host_has_aliases}; "
          + "; ".join(f"{n}: {info.get('search_aliases')}" for n, info in nodes.items()))
