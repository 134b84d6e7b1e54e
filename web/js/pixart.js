// PixArt-Σ Nodes browser extension: a live token counter on PixArt Text Encode (following the T5 loader's budget and
// caption cleaning) and the generated size on PixArt Empty Latent. Both ask the pack's server routes, so the numbers are the nodes' own. They are shown in a DOM widget (an
// HTML element the frontend places on the node), which the classic canvas and the Vue nodes mode both display.
//
// What is shown follows the frontend's change events, no polling: a node's own widget changes (onWidgetChanged, the
// widgets' callbacks), its connections (onConnectionsChange), typing in any text box of the page (the input event:
// neither mode reports typing in a text widget otherwise), a T5 loader's settings, and the workflow changes the
// frontend announces (api "graphChanged": links, subgraph conversion, loading a workflow). Each node asks its route
// only when what it would show depends on something that changed.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const SUBGRAPH_INPUT_ID = -10; // litegraph's id of a subgraph's input node
const SETTLE_MS = 30; // after a page-wide event, let the frontend write the new value into the widget first
const followers = new Set(); // the check functions of the nodes currently in a graph
let refreshTimer = null;

function refreshAll() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => {
    for (const check of followers) check();
  }, SETTLE_MS);
}

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function addStatus(node, name) {
  const element = document.createElement("div");
  element.className = "pixart-status";
  element.dataset.pixart = name;
  Object.assign(element.style, {
    font: "12px sans-serif", lineHeight: "18px", opacity: "0.85", padding: "0 6px", whiteSpace: "nowrap", overflow: "hidden",
    textOverflow: "ellipsis", pointerEvents: "none",
  });
  const status = node.addDOMWidget(name, "pixart-status", element, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => element.textContent,
    setValue: (value) => { element.textContent = value; },
    margin: 4,
    getMinHeight: () => 26,
    getMaxHeight: () => 26,
  });
  status.serialize = false;
  return status;
}

async function postJson(route, body) {
  const response = await api.fetchApi(route, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
  });
  const data = await response.json();
  if (!response.ok) throw new Error(data.error || response.statusText);
  return data;
}

function inputSlot(node, name) {
  return node.inputs?.findIndex((input) => input.name === name) ?? -1;
}

function allGraphs(graph) {
  const root = graph?.rootGraph ?? graph;
  return root ? [root, ...(root.subgraphs?.values?.() ?? [])] : [];
}

function nodesOf(graph) {
  return graph?.nodes ?? graph?._nodes ?? [];
}

// The link arriving at an input slot in the node's own graph (null for a node in no graph: the frontend throws on
// those). LGraphNode's method, called directly: a subgraph node overrides getInputLink with a lookup inside its
// subgraph.
function inputLink(node, slot) {
  if (!node?.graph) return null;
  const getInputLink = window.LiteGraph?.LGraphNode?.prototype?.getInputLink ?? node.getInputLink;
  return getInputLink?.call(node, slot) ?? null;
}

// The node that feeds `slot` of `node`, followed out of subgraphs: inside a subgraph the link starts at the
// subgraph's input node, so continue from the matching input of a node that uses this subgraph.
function sourceNode(node, slot, depth = 0) {
  if (slot < 0 || depth > 16) return null;
  const link = inputLink(node, slot);
  if (!link) return null;
  if (link.origin_id === SUBGRAPH_INPUT_ID || String(link.origin_id) === String(SUBGRAPH_INPUT_ID)) {
    for (const graph of allGraphs(node.graph)) {
      for (const host of nodesOf(graph)) {
        if (host.subgraph === node.graph) {
          const found = sourceNode(host, link.origin_slot, depth + 1);
          if (found) return found;
        }
      }
    }
    return null;
  }
  return node.graph?.getNodeById(link.origin_id) ?? null;
}

const NAMED_LENGTHS = { sigma_300: 300, alpha_120: 120 };

// How the prompt is tokenized: the connected PixArt T5 Loader's budget (a named one, or custom_length when
// caption_length is custom; 300 without a loader) and whether it or this node cleans captions.
function captionSettings(node) {
  const loader = sourceNode(node, inputSlot(node, "clip")) ?? {};
  const named = widget(loader, "caption_length")?.value;
  const length = named === "custom" ? Number(widget(loader, "custom_length")?.value ?? 77) : (NAMED_LENGTHS[named] ?? 300);
  const clean = Boolean(widget(loader, "clean_caption")?.value) || Boolean(widget(node, "clean_caption")?.value);
  return { caption_length: length, clean_caption: clean };
}

function chain(object, name, after) {
  const original = object[name];
  object[name] = function (...args) {
    const result = original?.apply(this, args);
    after.apply(this, args);
    return result;
  };
}

// Shows `describe(state)` whenever `read()` gives a new state, checked on the change events above while the node is
// in a graph; an answer that arrives after a newer request is dropped. Nodes the frontend creates without adding
// them to a graph (copies made while converting to a subgraph) never check.
function follow(node, status, widgets, read, describe) {
  let shown = null;
  let latest = 0;
  const check = async () => {
    if (!node.graph) return;
    try {
      const state = read();
      const key = JSON.stringify(state);
      if (key === shown) return;
      shown = key;
      const request = ++latest;
      const text = await describe(state);
      if (request === latest) {
        status.value = text;
        node.setDirtyCanvas?.(true, true);
      }
    } catch (error) {
      console.debug("pixart: status not updated", error);
    }
  };
  for (const w of widgets) chain(w, "callback", check);
  chain(node, "onWidgetChanged", check);
  chain(node, "onConnectionsChange", check);
  chain(node, "onAdded", () => { followers.add(check); check(); });
  chain(node, "onRemoved", () => followers.delete(check));
  if (node.graph) {
    followers.add(check);
    check();
  }
}

function setupTokenCounter(node) {
  const text = widget(node, "text");
  if (!text) return;
  const status = addStatus(node, "tokens");
  follow(node, status, [text], () => ({ text: String(text.value ?? ""), ...captionSettings(node) }),
    async (state) => {
      try {
        const data = await postJson("/pixart/token_count", state);
        return data.dropped > 0
          ? `${data.count}/${data.limit} tokens — TRUNCATED: ${data.dropped} cut off`
          : `${data.count}/${data.limit} tokens`;
      } catch (error) {
        return `token count unavailable: ${error.message}`;
      }
    });
}

function setupResolutionHelper(node) {
  const width = widget(node, "width");
  const height = widget(node, "height");
  const binning = widget(node, "binning");
  if (!width || !height || !binning) return;
  const status = addStatus(node, "generates");
  follow(node, status, [width, height, binning],
    () => ({ width: Number(width.value), height: Number(height.value), binning: String(binning.value) }),
    async (state) => {
      try {
        const data = await postJson("/pixart/resolution", state);
        return data.resized
          ? `generates ${data.width}×${data.height} (bins ${data.table}), resized back to ${state.width}×${state.height}`
          : `generates ${data.width}×${data.height}`;
      } catch (error) {
        return `size check unavailable: ${error.message}`;
      }
    });
}

app.registerExtension({
  name: "pixart.sigma.nodes",
  setup() {
    api.addEventListener("graphChanged", refreshAll);
    document.addEventListener("input", refreshAll, true);
    document.addEventListener("change", refreshAll, true);
  },
  nodeCreated(node) {
    if (node.comfyClass === "PixArtTextEncode") setupTokenCounter(node);
    if (node.comfyClass === "PixArtEmptyLatent") setupResolutionHelper(node);
    if (node.comfyClass === "PixArtT5Loader") chain(node, "onWidgetChanged", refreshAll); // its caption_length
  },
});
