//! diffnas in the browser: sample an exported model bundle (`diffnas export`) through WebGPU,
//! or on the CPU (Burn's flex backend) where the browser has no WebGPU adapter.
//!
//! The UNet, the noise schedule, the samplers and the noise streams are the library's own
//! (`diffnas::model`, `diffnas::diffusion`), so image `i` of seed `s` is the image
//! `diffnas sample --seed s` writes natively, up to floating-point differences between backends.
//!
//! JavaScript drives it one denoising step at a time (see `web/worker.js`):
//! `Engine.create(prefer)` -> `engine.load(manifest, genome, weights)` -> `model.start(..)` ->
//! `run.step(model)` per step (with `await run.settle()` for an honest progress bar) ->
//! `await run.rgba()`. Tensors are only ever read back asynchronously; a synchronous read would
//! block the browser's event loop, which WebGPU forbids.

use burn::tensor::{Device, Tensor};
use diffnas::diffusion::{
    NoiseSchedule, Sampler, SamplerKind, SamplingRun, make_sampler, to_pixels,
};
use diffnas::model::Unet;
use diffnas::model::bundle::{BundleManifest, load_bundle};
use std::cell::RefCell;
use wasm_bindgen::prelude::*;

thread_local! {
    /// The message of the last Rust panic. A panic aborts the wasm instance; the worker reads
    /// this through [`last_panic`] to tell the page what happened (for example, out of memory).
    static LAST_PANIC: RefCell<Option<String>> = const { RefCell::new(None) };
    /// The WebGPU device, or why there is none. Burn's wgpu runtime can be initialised once per
    /// thread (worker), so the outcome is kept.
    static WEBGPU: RefCell<Option<Result<(Device, String), String>>> = const { RefCell::new(None) };
}

#[wasm_bindgen(start)]
pub fn start() {
    std::panic::set_hook(Box::new(|info| {
        let msg = info.to_string();
        LAST_PANIC.with(|p| *p.borrow_mut() = Some(msg));
        console_error_panic_hook::hook(info);
    }));
}

/// The message of the panic that aborted this instance, if any.
#[wasm_bindgen(js_name = lastPanic)]
pub fn last_panic() -> Option<String> {
    LAST_PANIC.with(|p| p.borrow().clone())
}

fn err(msg: impl std::fmt::Display) -> JsError {
    JsError::new(&msg.to_string())
}

async fn webgpu() -> Result<(Device, String), String> {
    if let Some(done) = WEBGPU.with(|w| w.borrow().clone()) {
        return done;
    }
    let outcome = match Device::wgpu_options().init_with_setup_async().await {
        Ok((device, setup)) => {
            let info = setup.adapter.get_info();
            // Browsers hide adapter names from wgpu; the page asks navigator.gpu instead.
            let name = info.name.trim();
            let description = if name.is_empty() {
                "WebGPU".to_string()
            } else {
                format!("WebGPU ({name})")
            };
            Ok((device, description))
        }
        Err(e) => Err(e.to_string()),
    };
    WEBGPU.with(|w| *w.borrow_mut() = Some(outcome.clone()));
    outcome
}

/// A compute backend: WebGPU, or the CPU.
#[wasm_bindgen]
pub struct Engine {
    device: Device,
    kind: &'static str,
    description: String,
    fallback_reason: Option<String>,
}

#[wasm_bindgen]
impl Engine {
    /// `prefer`: "auto" (WebGPU, else the CPU, saying why), "webgpu" (an error without an
    /// adapter) or "cpu".
    pub async fn create(prefer: String) -> Result<Engine, JsError> {
        let cpu = |reason: Option<String>| Engine {
            device: Device::flex(),
            kind: "cpu",
            description: "CPU (flex, single thread)".into(),
            fallback_reason: reason,
        };
        match prefer.as_str() {
            "cpu" => Ok(cpu(None)),
            "webgpu" | "auto" => match webgpu().await {
                Ok((device, description)) => Ok(Engine {
                    device,
                    kind: "webgpu",
                    description,
                    fallback_reason: None,
                }),
                Err(e) if prefer == "auto" => Ok(cpu(Some(format!("no WebGPU adapter: {e}")))),
                Err(e) => Err(err(format!("no WebGPU adapter: {e}"))),
            },
            other => Err(err(format!(
                "backend {other:?}: expected \"auto\", \"webgpu\" or \"cpu\""
            ))),
        }
    }

    /// "webgpu" or "cpu".
    #[wasm_bindgen(getter)]
    pub fn kind(&self) -> String {
        self.kind.to_string()
    }

    /// What runs the model, for the page ("WebGPU (adapter name)" or "CPU (...)").
    #[wasm_bindgen(getter)]
    pub fn description(&self) -> String {
        self.description.clone()
    }

    /// Why "auto" fell back to the CPU.
    #[wasm_bindgen(getter, js_name = fallbackReason)]
    pub fn fallback_reason(&self) -> Option<String> {
        self.fallback_reason.clone()
    }

    /// Check a bundle's files against its manifest (sizes, SHA-256, genome, image shape) and
    /// build its UNet on this backend.
    pub fn load(
        &self,
        manifest_json: &str,
        genome: &[u8],
        weights: Vec<u8>,
    ) -> Result<Model, JsError> {
        let manifest = BundleManifest::from_json(manifest_json).map_err(err)?;
        let (unet, _) = load_bundle(&manifest, genome, weights, &self.device).map_err(err)?;
        let schedule = NoiseSchedule::new(manifest.beta_schedule, manifest.timesteps)
            .map_err(|e| err(format!("model.json: {e}")))?;
        Ok(Model {
            unet,
            schedule,
            manifest,
            device: self.device.clone(),
        })
    }
}

/// A loaded model.
#[wasm_bindgen]
pub struct Model {
    unet: Unet,
    schedule: NoiseSchedule,
    manifest: BundleManifest,
    device: Device,
}

#[wasm_bindgen]
impl Model {
    #[wasm_bindgen(getter)]
    pub fn name(&self) -> String {
        self.manifest.name.clone()
    }
    #[wasm_bindgen(getter)]
    pub fn channels(&self) -> usize {
        self.manifest.image.channels
    }
    #[wasm_bindgen(getter)]
    pub fn size(&self) -> usize {
        self.manifest.image.size
    }
    #[wasm_bindgen(getter)]
    pub fn params(&self) -> f64 {
        self.manifest.params as f64
    }
    #[wasm_bindgen(getter)]
    pub fn macs(&self) -> f64 {
        self.manifest.macs as f64
    }
    #[wasm_bindgen(getter)]
    pub fn timesteps(&self) -> usize {
        self.manifest.timesteps
    }
    #[wasm_bindgen(getter, js_name = defaultSteps)]
    pub fn default_steps(&self) -> usize {
        self.manifest.default_steps
    }

    /// Start sampling images `first .. first + count` of `seed`'s sequence with `steps`
    /// respaced steps of `sampler` ("ddim" or "ddpm"; `eta` is DDIM's).
    pub fn start(
        &self,
        first: f64,
        count: usize,
        steps: usize,
        seed: f64,
        sampler: &str,
        eta: f64,
    ) -> Result<Run, JsError> {
        let int = |name: &str, v: f64| {
            if v.is_finite() && v >= 0.0 && v.fract() == 0.0 && v <= 9_007_199_254_740_991.0 {
                Ok(v as u64)
            } else {
                Err(err(format!(
                    "{name} {v}: expected a whole number from 0 to 2^53 - 1"
                )))
            }
        };
        let (first, seed) = (int("first image", first)?, int("seed", seed)?);
        if count == 0 {
            return Err(err("number of images must be at least 1"));
        }
        if steps == 0 || steps > self.manifest.timesteps {
            return Err(err(format!(
                "steps {steps}: expected 1 to {} (the model's training timesteps)",
                self.manifest.timesteps
            )));
        }
        if !(0.0..=1.0).contains(&eta) {
            return Err(err(format!("eta {eta}: expected a value from 0 to 1")));
        }
        let kind: SamplerKind = sampler.parse().map_err(err)?;
        let sampler = make_sampler(kind, self.schedule.clone(), steps, eta);
        let image = self.manifest.image;
        let shape = [image.channels, image.size, image.size];
        Ok(Run {
            run: SamplingRun::new(sampler, seed, first, count, shape, &self.device),
            count,
            shape,
        })
    }
}

/// One batch of images being denoised.
#[wasm_bindgen]
pub struct Run {
    run: SamplingRun<Box<dyn Sampler>>,
    count: usize,
    shape: [usize; 3],
}

#[wasm_bindgen]
impl Run {
    /// Queue one denoising step; false once every step is done.
    pub fn step(&mut self, model: &Model) -> bool {
        self.run.step(&model.unet)
    }

    #[wasm_bindgen(getter, js_name = stepsDone)]
    pub fn steps_done(&self) -> usize {
        self.run.steps_done()
    }

    #[wasm_bindgen(getter, js_name = totalSteps)]
    pub fn total_steps(&self) -> usize {
        self.run.total_steps()
    }

    /// Resolves once the queued steps have run (reads back one value). On WebGPU, steps are
    /// only queued by [`Run::step`]; awaiting this after each step makes progress real.
    pub fn settle(&self) -> js_sys::Promise {
        let one: Tensor<4> = self.run.images().slice([0..1, 0..1, 0..1, 0..1]);
        wasm_bindgen_futures::future_to_promise(async move {
            one.into_data_async()
                .await
                .map_err(|e| JsValue::from(err(format!("reading back: {e:?}"))))?;
            Ok(JsValue::UNDEFINED)
        })
    }

    /// The images as 8-bit values, `count x C x H x W` (the layout `diffnas sample` writes).
    pub fn pixels(&self) -> js_sys::Promise {
        let x = self.run.images();
        wasm_bindgen_futures::future_to_promise(async move {
            let v = read_pixels(x).await.map_err(JsValue::from)?;
            Ok(js_sys::Uint8Array::from(v.as_slice()).into())
        })
    }

    /// The images as RGBA, `count x H x W x 4` (gray images repeat their one channel).
    pub fn rgba(&self) -> js_sys::Promise {
        let x = self.run.images();
        let (count, shape) = (self.count, self.shape);
        wasm_bindgen_futures::future_to_promise(async move {
            let v = read_pixels(x).await.map_err(JsValue::from)?;
            Ok(js_sys::Uint8Array::from(chw_to_rgba(&v, count, shape).as_slice()).into())
        })
    }
}

async fn read_pixels(x: Tensor<4>) -> Result<Vec<u8>, JsError> {
    let data = x
        .into_data_async()
        .await
        .map_err(|e| err(format!("reading back: {e:?}")))?;
    let v = data
        .convert::<f32>()
        .try_into_vec::<f32>()
        .map_err(|e| err(format!("reading back: {e:?}")))?;
    Ok(to_pixels(&v))
}

/// `count` CHW 8-bit images -> `count x H x W x 4` RGBA (opaque).
pub fn chw_to_rgba(pixels: &[u8], count: usize, [c, h, w]: [usize; 3]) -> Vec<u8> {
    let per = c * h * w;
    let mut out = vec![255u8; count * h * w * 4];
    for i in 0..count {
        let img = &pixels[i * per..(i + 1) * per];
        for y in 0..h {
            for x in 0..w {
                let o = ((i * h + y) * w + x) * 4;
                for ch in 0..3 {
                    out[o + ch] = img[ch.min(c - 1) * h * w + y * w + x];
                }
            }
        }
    }
    out
}
