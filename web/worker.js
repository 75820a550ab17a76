// The sampling worker: loads the wasm module, picks the backend once, fetches and checks a model
// bundle, and samples it batch by batch, one denoising step at a time, posting progress and
// images to the page (main.js).
//
// Messages in:  { cmd: "sample", backend, manifestUrl, n, steps, seed, batch }
// Messages out: backend, loaded, progress, batch, done, error ({ message, fatal }).

import init, { Engine, lastPanic } from "./pkg/diffnas_web.js";

let ready = null;
let engine = null;
let model = null;
let modelKey = null;
let description = null;

/// What the browser says about its WebGPU adapter (wgpu's adapter info is empty in browsers).
async function adapterName() {
  try {
    const info = (await navigator.gpu.requestAdapter())?.info;
    const parts = [info?.vendor, info?.architecture, info?.device, info?.description].filter((p) => p);
    return parts.length ? parts.join(" ") : "adapter without a name";
  } catch {
    return "adapter without a name";
  }
}

async function fetchOk(url, what) {
  let r;
  try {
    r = await fetch(url);
  } catch (e) {
    throw new Error(`Could not fetch the ${what} ${url}: ${e.message}`);
  }
  if (!r.ok) throw new Error(`Could not fetch the ${what} ${url}: HTTP ${r.status} ${r.statusText}`);
  return r;
}

async function loadModel(manifestUrl) {
  const text = await (await fetchOk(manifestUrl, "model manifest")).text();
  let manifest;
  try {
    manifest = JSON.parse(text);
  } catch (e) {
    throw new Error(`${manifestUrl} is not a model manifest (not JSON: ${e.message})`);
  }
  const key = `${manifestUrl}#${manifest?.weights?.sha256}#${manifest?.genome?.sha256}`;
  if (model && modelKey === key) return { manifest, seconds: 0 };
  const t0 = performance.now();
  if (!manifest.genome?.file || !manifest.weights?.file) {
    throw new Error(`${manifestUrl}: not a model manifest written by \`diffnas export\` (no genome or weights entry)`);
  }
  const [genome, weights] = await Promise.all([
    fetchOk(new URL(manifest.genome.file, manifestUrl), "genome").then((r) => r.arrayBuffer()),
    fetchOk(new URL(manifest.weights.file, manifestUrl), "weights").then((r) => r.arrayBuffer()),
  ]);
  if (model) model.free();
  model = null;
  modelKey = null;
  try {
    model = engine.load(text, new Uint8Array(genome), new Uint8Array(weights));
  } catch (e) {
    throw new Error(`Could not load the model ${manifest.name ?? manifestUrl}: ${e.message}`);
  }
  modelKey = key;
  return { manifest, seconds: (performance.now() - t0) / 1000 };
}

/// RGBA -> CHW bytes (the layout `diffnas sample` uses), for the page's result.
function rgbaToChw(rgba, count, size, channels) {
  const hw = size * size;
  const out = new Uint8Array(count * channels * hw);
  for (let i = 0; i < count; i++) {
    for (let p = 0; p < hw; p++) {
      for (let c = 0; c < channels; c++) out[(i * channels + c) * hw + p] = rgba[(i * hw + p) * 4 + c];
    }
  }
  return out;
}

async function sample(m) {
  ready ??= init();
  await ready;
  if (!engine) {
    engine = await Engine.create(m.backend);
    description = engine.description;
    if (engine.kind === "webgpu") description = `WebGPU (${await adapterName()})`;
  }
  postMessage({ type: "backend", requested: m.backend, kind: engine.kind, description, fallbackReason: engine.fallbackReason ?? null });

  const { manifest, seconds } = await loadModel(m.manifestUrl);
  const { size, channels } = manifest.image;
  postMessage({
    type: "loaded", name: manifest.name, params: manifest.params, macs: manifest.macs, size, channels,
    bytes: manifest.genome.bytes + manifest.weights.bytes, dtype: manifest.dtype, seconds,
  });

  let stepsPerImage = 0;
  for (let first = 0; first < m.n; first += m.batch) {
    const count = Math.min(m.batch, m.n - first);
    const run = model.start(first, count, m.steps, m.seed, "ddim", 0);
    stepsPerImage = run.totalSteps;
    const total = m.n * run.totalSteps;
    try {
      while (run.step(model)) {
        await run.settle();
        postMessage({ type: "progress", done: first * run.totalSteps + count * run.stepsDone, total, imagesDone: first, n: m.n });
      }
      const rgba = await run.rgba();
      const pixels = rgbaToChw(rgba, count, size, channels);
      postMessage({ type: "batch", first, count, size, channels, rgba, pixels }, [rgba.buffer, pixels.buffer]);
    } finally {
      run.free();
    }
  }
  postMessage({ type: "done", name: manifest.name, n: m.n, steps: stepsPerImage, seed: m.seed, size, channels });
}

self.onmessage = async (e) => {
  if (e.data?.cmd !== "sample") return;
  try {
    await sample(e.data);
  } catch (err) {
    let panic = null;
    try {
      panic = lastPanic();
    } catch {
      // The instance is gone; nothing more to read.
    }
    let message = err?.message ?? String(err);
    const fatal = panic != null || err instanceof WebAssembly.RuntimeError;
    if (panic) message = `The sampler crashed: ${panic}`;
    if (/out of memory|outofmemory|allocat/i.test(message)) {
      message += "\nThe device ran out of memory: sample fewer images at once or pick a smaller model.";
    }
    postMessage({ type: "error", message, fatal });
  }
};
