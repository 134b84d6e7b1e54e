// PixArt-Σ Nodes browser extension: live token counter on PixArt Text Encode and a resolution helper on
// PixArt Empty Latent. Both ask the pack's small server routes, so the numbers are the nodes' own.
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const DEBOUNCE_MS = 250;

function debounce(fn, ms) {
  let timer = null;
  return (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
}

function widget(node, name) {
  return node.widgets?.find((w) => w.name === name);
}

function addStatus(node, name) {
  const status = node.addWidget("text", name, "", () => {}, { serialize: false });
  status.serialize = false;
  status.disabled = true;
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

function captionLength(node) {
  // Follow the clip input to a PixArt T5 Loader and read its caption_length; 300 (Σ) otherwise.
  const link = node.inputs?.find((i) => i.name === "clip")?.link;
  const origin = link != null ? node.graph?.getNodeById(node.graph.links[link]?.origin_id) : null;
  const choice = origin ? widget(origin, "caption_length")?.value : null;
  return choice === "alpha_120" ? 120 : 300;
}

function setupTokenCounter(node) {
  const text = widget(node, "text");
  if (!text) return;
  const status = addStatus(node, "tokens");
  const update = debounce(async () => {
    const limit = captionLength(node);
    try {
      const data = await postJson("/pixart/token_count", { text: text.value ?? "", caption_length: limit });
      status.value = data.dropped > 0
        ? `${data.count}/${data.limit} tokens — TRUNCATED: ${data.dropped} cut off`
        : `${data.count}/${data.limit} tokens`;
    } catch (error) {
      status.value = `token count unavailable: ${error.message}`;
    }
    node.setDirtyCanvas(true, true);
  }, DEBOUNCE_MS);
  const original = text.callback;
  text.callback = function (...args) {
    update();
    return original?.apply(this, args);
  };
  text.inputEl?.addEventListener("input", update);
  update();
}

function setupResolutionHelper(node) {
  const width = widget(node, "width");
  const height = widget(node, "height");
  const binning = widget(node, "binning");
  if (!width || !height || !binning) return;
  const status = addStatus(node, "generates");
  const update = debounce(async () => {
    try {
      const data = await postJson("/pixart/resolution", {
        width: Number(width.value), height: Number(height.value), binning: String(binning.value),
      });
      status.value = data.resized
        ? `generates ${data.width}×${data.height} (bins ${data.table}), resized back to ${width.value}×${height.value}`
        : `generates ${data.width}×${data.height}`;
    } catch (error) {
      status.value = `size check unavailable: ${error.message}`;
    }
    node.setDirtyCanvas(true, true);
  }, DEBOUNCE_MS);
  for (const w of [width, height, binning]) {
    const original = w.callback;
    w.callback = function (...args) {
      update();
      return original?.apply(this, args);
    };
  }
  update();
}

app.registerExtension({
  name: "pixart.sigma.nodes",
  nodeCreated(node) {
    if (node.comfyClass === "PixArtTextEncode") setupTokenCounter(node);
    if (node.comfyClass === "PixArtEmptyLatent") setupResolutionHelper(node);
  },
});
