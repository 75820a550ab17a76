// The page: model list, controls, progress, the image grid. Sampling runs in a Web Worker
// (worker.js) so the page stays responsive; a crashed worker (a panic, out of memory) is
// replaced by a fresh one on the next run.
//
// Query parameters preset the form: ?model=NAME&n=16&steps=20&seed=0&backend=auto|webgpu|cpu,
// &models=URL (the export folder, default "models/"), &run=1 to start at once.
// window.diffnas exposes the state and the last result (used by the browser test).

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const modelsBase = new URL(params.get("models") || "models/", location.href);
const BATCH = 16;

const state = (window.diffnas = {
  state: "idle", // idle | loading | sampling | done | error | stopped
  backend: null,
  fallbackReason: null,
  error: null,
  result: null, // { model, n, steps, seed, backend, seconds, imagesPerSecond, pixels (CHW bytes), size, channels }
  runs: 0,
});

let worker = null;
let workerBackend = null;
let index = null;

function setState(s) {
  state.state = s;
  document.body.dataset.state = s;
  $("sample").disabled = s === "loading" || s === "sampling";
  $("stop").disabled = !(s === "loading" || s === "sampling");
}

function showError(message) {
  state.error = message;
  $("error").textContent = message;
  $("error").style.display = "block";
  setState("error");
}

function clearError() {
  state.error = null;
  $("error").style.display = "none";
  $("error").textContent = "";
}

function status(text) {
  $("status").textContent = text;
}

function fmtCount(x) {
  return x >= 1e6 ? `${(x / 1e6).toFixed(2)} M` : x >= 1e3 ? `${(x / 1e3).toFixed(1)} k` : `${x}`;
}

function intField(id, lo, hi) {
  const el = $(id);
  const v = Number(el.value);
  if (!Number.isInteger(v) || v < lo || v > hi) {
    throw new Error(`${el.parentElement.firstChild.textContent.trim()}: ${JSON.stringify(el.value)} is not a whole number from ${lo} to ${hi}`);
  }
  return v;
}

function newWorker() {
  if (worker) worker.terminate();
  worker = new Worker(new URL("worker.js", import.meta.url), { type: "module" });
  workerBackend = null;
  worker.onerror = (e) => {
    showError(`The sampling worker failed to start: ${e.message || "unknown error"} (does this browser support module workers and WebAssembly?)`);
    worker = null;
  };
  worker.onmessage = (e) => onMessage(e.data);
}

let grid = null; // { ctx, cols, size, scale, channels }
let collected = null; // CHW bytes of the run so far
let started = 0;

function prepareGrid(n, size) {
  const canvas = $("grid");
  const cols = Math.ceil(Math.sqrt(n));
  const rows = Math.ceil(n / cols);
  const scale = Math.max(1, Math.floor(96 / size));
  const pad = 2;
  canvas.width = cols * (size * scale + pad) + pad;
  canvas.height = rows * (size * scale + pad) + pad;
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#222";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.imageSmoothingEnabled = false;
  grid = { ctx, cols, size, scale, pad };
}

function drawBatch(first, count, rgba) {
  const { ctx, cols, size, scale, pad } = grid;
  const per = size * size * 4;
  const tile = document.createElement("canvas");
  tile.width = size;
  tile.height = size;
  const tctx = tile.getContext("2d");
  for (let k = 0; k < count; k++) {
    const i = first + k;
    const img = new ImageData(new Uint8ClampedArray(rgba.buffer, rgba.byteOffset + k * per, per), size, size);
    tctx.putImageData(img, 0, 0);
    const x = pad + (i % cols) * (size * scale + pad);
    const y = pad + Math.floor(i / cols) * (size * scale + pad);
    ctx.drawImage(tile, x, y, size * scale, size * scale);
  }
}

function onMessage(m) {
  switch (m.type) {
    case "backend":
      state.backend = m.description;
      state.fallbackReason = m.fallbackReason;
      workerBackend = m.requested;
      status(`Backend: ${m.description}${m.fallbackReason ? ` (${m.fallbackReason})` : ""}. Loading the model…`);
      break;
    case "loaded":
      $("model-info").textContent = `${m.name}: ${fmtCount(m.params)} parameters, ${(m.macs / 1e6).toFixed(1)} M MACs per image per step, ${m.size}×${m.size}×${m.channels}, ${(m.bytes / 1024).toFixed(0)} KiB (${m.dtype}); loaded in ${m.seconds.toFixed(2)} s`;
      setState("sampling");
      started = performance.now();
      break;
    case "progress": {
      const p = $("progress");
      p.max = m.total;
      p.value = m.done;
      status(`${state.backend}: image ${Math.min(m.imagesDone + 1, m.n)} of ${m.n}, step ${m.done} of ${m.total} overall`);
      break;
    }
    case "batch":
      collected.set(m.pixels, m.first * m.size * m.size * m.channels);
      drawBatch(m.first, m.count, m.rgba);
      break;
    case "done": {
      const seconds = (performance.now() - started) / 1000;
      state.runs += 1;
      state.result = {
        model: m.name, n: m.n, steps: m.steps, seed: m.seed, backend: state.backend,
        seconds, imagesPerSecond: m.n / seconds, size: m.size, channels: m.channels,
        pixels: collected,
      };
      status(`${state.backend}: ${m.n} images × ${m.steps} steps in ${seconds.toFixed(2)} s — ${(1000 * seconds / m.n).toFixed(1)} ms per image (${(m.n / seconds).toFixed(2)} images/s)`);
      setState("done");
      break;
    }
    case "error":
      status("Failed.");
      showError(m.message);
      if (m.fatal) {
        worker.terminate();
        worker = null;
      }
      break;
  }
}

function start() {
  clearError();
  let n, steps, seed;
  try {
    n = intField("n", 1, 256);
    steps = intField("steps", 1, 1000);
    seed = intField("seed", 0, Number.MAX_SAFE_INTEGER);
  } catch (e) {
    showError(e.message);
    return;
  }
  const entry = index.models.find((m) => m.name === $("model").value);
  if (!entry) {
    showError("Choose a model.");
    return;
  }
  const backend = $("backend").value;
  if (!worker || (workerBackend !== null && workerBackend !== backend)) newWorker();
  setState("loading");
  status("Starting…");
  $("progress").value = 0;
  prepareGrid(n, entry.image.size);
  collected = new Uint8Array(n * entry.image.channels * entry.image.size * entry.image.size);
  worker.postMessage({
    cmd: "sample",
    backend,
    manifestUrl: new URL(entry.manifest, modelsBase).href,
    n, steps, seed, batch: BATCH,
  });
}

async function init() {
  for (const key of ["n", "steps", "seed"]) if (params.has(key)) $(key).value = params.get(key);
  if (params.has("backend")) $("backend").value = params.get("backend");
  $("controls").addEventListener("submit", (e) => {
    e.preventDefault();
    start();
  });
  $("stop").addEventListener("click", () => {
    if (worker) worker.terminate();
    worker = null;
    status("Stopped.");
    setState("stopped");
  });
  const url = new URL("index.json", modelsBase);
  try {
    const r = await fetch(url);
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    index = await r.json();
    if (!Array.isArray(index.models) || index.models.length === 0) throw new Error("it lists no models");
  } catch (e) {
    showError(`Could not load the model list ${url}: ${e.message}. Export one with \`diffnas export RUN_DIR --out web/models\`.`);
    status("");
    return;
  }
  for (const m of index.models) {
    const o = document.createElement("option");
    o.value = m.name;
    o.textContent = `${m.name} (${m.image.size}×${m.image.size}, ${fmtCount(m.params)} params, ${(m.bytes / 1024).toFixed(0)} KiB)`;
    $("model").append(o);
  }
  if (params.has("model")) {
    if (!index.models.some((m) => m.name === params.get("model"))) {
      showError(`No model named ${JSON.stringify(params.get("model"))} in ${url}; it lists ${index.models.map((m) => m.name).join(", ")}.`);
      status("");
      return;
    }
    $("model").value = params.get("model");
  }
  status(`${index.models.length} model(s). Choose one and press Sample.`);
  setState("idle");
  if (params.get("run") === "1") start();
}

init();
