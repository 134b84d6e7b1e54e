"""Host tier, headless Chromium on the current frontend (1.58: its Issues panel, node library and node Info tab):
what a new user sees. Every example workflow opened on a server whose models folder is empty lists exactly its
published files, with their folders, and each Download button fetches the file's Hugging Face URL; on a server that
has those files (empty placeholders under the right names), nothing is reported missing. Every PixArt node's help
opens in the Info tab and names every input; searching the node library for 'T5', 'sampler', 'pixart' and
'ControlNet' shows the matching PixArt nodes. Frontends without these panels (the 1.27 that ComfyUI 0.3.64 pins)
are skipped with the reason; set COMFYUI_FRONTEND_ROOT to comfyui-frontend-package 1.58.1's static folder."""
import json
import os
import re

import pytest

from bench.fixtures.comfy_server import ComfyServer
from bench.fixtures.pack import ROOT
from host.comfy_host import require_comfyui
from tools.node_docs import PACK_FOLDER, pack_nodes, schema_inputs
from tools.published_models import FILES

COMFYUI = require_comfyui()
playwright = pytest.importorskip("playwright.sync_api", reason="host tier browser test needs the playwright package")
CHROMIUM = "/usr/bin/chromium"
ARTEFACTS = os.path.join(ROOT, "tests", "host", "artefacts")
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
EXAMPLES = sorted(f for f in os.listdir(os.path.join(ROOT, "example_workflows")) if f.endswith(".json"))
FOLDERS = ("diffusion_models", "text_encoders", "vae", "diffusers", "controlnet", "checkpoints", "loras")
SEARCHES = ("T5", "sampler", "pixart", "ControlNet")


def _base(tmp_path_factory, name: str, placeholders: bool) -> str:
    base = str(tmp_path_factory.mktemp(name))
    for folder in FOLDERS:
        os.makedirs(os.path.join(base, "models", folder), exist_ok=True)
    if placeholders:  # the published names in their folders; empty files are enough for the frontend's check
        for model in FILES.values():
            open(os.path.join(base, "models", model.directory, model.name), "wb").close()
    return base


@pytest.fixture(scope="module")
def empty_server(tmp_path_factory):
    server = ComfyServer(COMFYUI, _base(tmp_path_factory, "empty_models", placeholders=False))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stocked_server(tmp_path_factory):
    server = ComfyServer(COMFYUI, _base(tmp_path_factory, "stocked_models", placeholders=True))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip("browser test skipped: Debian's chromium is not installed (apt-get install chromium)")
    with playwright.sync_playwright() as p:
        instance = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield instance
        instance.close()


def _open(browser, server):
    """A fresh page on `server`, as a user opens ComfyUI; Hugging Face answered locally, every request recorded."""
    context = browser.new_context(viewport={"width": 1600, "height": 1000})
    context.requests = []

    def answer(route):
        context.requests.append((route.request.method, route.request.url))
        route.fulfill(status=200, body="placeholder", headers={"content-length": "11"})

    context.route("https://huggingface.co/**", answer)
    page = context.new_page()
    page.goto(server.url, wait_until="networkidle", timeout=120_000)
    page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
    page.wait_for_timeout(1500)
    page.keyboard.press("Escape")  # the first-visit template browser
    frontend = page.evaluate("() => window.__COMFYUI_FRONTEND_VERSION__ ?? 'unknown'")
    panels = page.evaluate("""() => !!document.querySelector('[data-testid=node-library-tab-button]')
        && !!document.querySelector('button[aria-label="Toggle properties panel"]')""")
    if not panels:
        context.close()
        pytest.skip(f"frontend {frontend} has no Issues/Info side panel and node library of 1.58; "
                    "set COMFYUI_FRONTEND_ROOT to comfyui-frontend-package 1.58.1")
    return page


def _load(page, name: str) -> dict:
    """Opens an example the way the app does for a dropped or opened file (app.loadGraphData)."""
    with open(os.path.join(ROOT, "example_workflows", name), encoding="utf-8") as fh:
        workflow = json.load(fh)
    page.evaluate("async (workflow) => { await app.loadGraphData(workflow); }", workflow)
    return workflow


def _expected_files(name: str) -> set[tuple[str, str]]:
    """The published files the example's API copy selects, with their folders (independent of the UI file)."""
    with open(os.path.join(ROOT, "example_workflows", "api", name), encoding="utf-8") as fh:
        prompt = json.load(fh)
    return {(FILES[v].name, FILES[v].directory) for node in prompt.values() for v in node["inputs"].values()
            if isinstance(v, str) and v in FILES}


def _listed(page) -> list[tuple[str, str]]:
    """(file, folder) rows the Missing Models section shows (the folder line adds ' · size' once it is known)."""
    text = page.locator("[data-testid=missing-model-importable-rows]").inner_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and line.strip() != "Download"]
    return [(file, folder.split(" · ")[0]) for file, folder in zip(lines[0::2], lines[1::2])]


@pytest.mark.parametrize("name", EXAMPLES)
def test_empty_install_lists_the_missing_files_with_downloads(browser, empty_server, name):
    page = _open(browser, empty_server)
    try:
        _load(page, name)
        expected = _expected_files(name)
        toast = page.get_by_role("button", name="View details")
        toast.wait_for(state="visible", timeout=20_000)
        found = re.search(r"(\d+) issues? found", page.evaluate("() => document.body.innerText"))
        assert found and int(found.group(1)) >= len(expected)  # the models, plus any missing input image
        toast.click()
        page.locator("[data-testid=error-group-missing-model]").wait_for(state="visible", timeout=20_000)
        page.wait_for_timeout(500)
        listed = _listed(page)
        os.makedirs(ARTEFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTEFACTS, f"missing-models-{name.replace('.json', '.png')}"))
        print(f"\n{name}: Missing Models lists {listed}")
        assert sorted(listed) == sorted(expected) and len(listed) == len(expected)
        for file_name, _ in listed:  # each row's Download button asks for the published URL
            with page.context.expect_page() as opened:
                page.get_by_role("button", name=f"Download {file_name}").click()
            opened.value.close()
            assert ("GET", FILES[file_name].url) in page.context.requests, (file_name, page.context.requests)
    finally:
        page.context.close()


@pytest.mark.parametrize("name", EXAMPLES)
def test_install_with_the_files_reports_nothing_missing(browser, stocked_server, name):
    page = _open(browser, stocked_server)
    try:
        _load(page, name)
        selected = page.evaluate("""() => (app.graph.nodes ?? app.graph._nodes).flatMap((node) =>
            (node.widgets ?? []).filter((w) => w.type === 'combo' && (w.options?.values ?? []).includes(w.value))
                                 .map((w) => w.value))""")
        assert {f for f, _ in _expected_files(name)} <= set(selected)  # the server lists every file the example uses
        page.wait_for_timeout(4000)  # the empty install shows its toast within about a second
        visible = page.evaluate("() => document.body.innerText")
        assert "issues found" not in visible and "Missing Models" not in visible
        assert page.locator("[data-testid=error-group-missing-model]").count() == 0
        print(f"\n{name}: nothing reported missing")
    finally:
        page.context.close()


@pytest.fixture(scope="module")
def nodes(empty_server):
    return pack_nodes(empty_server.get("/object_info"), PACK_FOLDER)


def test_help_of_every_node_opens_and_names_every_input(browser, empty_server, nodes):
    page = _open(browser, empty_server)
    try:
        for index, (node_id, info) in enumerate(nodes.items()):
            page.evaluate("""(type) => {  // the node alone on the canvas, selected as a click does
                const graph = app.canvas.graph;
                for (const old of [...(graph.nodes ?? graph._nodes)]) graph.remove(old);
                const node = LiteGraph.createNode(type);
                node.pos = [400, 200];
                app.canvas.graph.add(node);
                app.canvas.selectNode(node);
                app.canvas.setDirty(true, true);
            }""", node_id)
            if index == 0 and not page.locator("[data-testid=properties-panel]").is_visible():
                page.get_by_role("button", name="Toggle properties panel").click()  # closed unless a test left it open
            page.locator("[data-testid=panel-tab-info]").click()
            with open(os.path.join(ROOT, "web", "docs", f"{node_id}.md"), encoding="utf-8") as fh:
                recipe_line = fh.read().split("## Recipe for the best result", 1)[1].strip().splitlines()[0]
            # a phrase of the hand-written recipe, as plain text
            words = max(recipe_line.lstrip("- ").replace("*", "").split("`"), key=len).strip()[:40]
            panel = page.locator("[data-testid=properties-panel]")
            playwright.expect(panel).to_contain_text(words, timeout=20_000)
            shown = panel.inner_text()
            missing = [name for name, _, _, _ in schema_inputs(info) if name not in shown]
            assert missing == [], f"{node_id} help shows no {missing}"
            assert f"({node_id})" in shown
            print(f"\n{node_id}: help shown ({len(shown)} characters), all {len(schema_inputs(info))} inputs named")
        os.makedirs(ARTEFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTEFACTS, "node-help-info-tab.png"))
    finally:
        page.context.close()


@pytest.mark.parametrize("word", SEARCHES)
def test_node_library_search_finds_the_pixart_nodes(browser, empty_server, nodes, word):
    expected = sorted(info["display_name"] for node_id, info in nodes.items()
                      if any(word.lower() in field.lower()
                             for field in [node_id, info["display_name"]] + (info.get("search_aliases") or [])))
    assert expected
    page = _open(browser, empty_server)
    try:
        page.locator("[data-testid=node-library-tab-button]").click()
        box = page.get_by_placeholder("Search", exact=False).first  # the node library's search box (sidebar open)
        box.fill(word)
        for display_name in expected:
            playwright.expect(page.get_by_text(display_name, exact=True).first).to_be_visible(timeout=20_000)
        os.makedirs(ARTEFACTS, exist_ok=True)
        page.screenshot(path=os.path.join(ARTEFACTS, f"node-search-{word}.png"))
        print(f"\nsearch {word!r} shows {expected}")
    finally:
        page.context.close()
