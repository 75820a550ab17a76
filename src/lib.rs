//! diffnas: architecture search for diffusion-model UNets on any GPU.
//!
//! Every tensor operation runs through Burn: the wgpu backend (WGSL compute shaders, so
//! Vulkan, Metal, DX12 and WebGPU) or the flex CPU backend.
//!
//! Module dependency rules (an arrow reads "may use"):
//! - `genome` -> nothing of ours (plain serde data, no Burn, no I/O).
//! - `diffusion` -> burn only; it owns the [`diffusion::Denoiser`] trait, the samplers and
//!   IDDPM's variational bound (`diffusion::vlb`: learned variance, `L_hybrid`, KL terms).
//! - `cpu` -> burn only: our CPU kernels (convolution, GroupNorm + SiLU, AdamW, EMA) for the
//!   `flex` backend, plain Rust over slices (so the browser's CPU fallback has them too).
//! - `precision` -> burn only: the compute precision (f32, f16, bf16) of the UNet's
//!   convolutions and attention matmuls, a property of the calling thread set for a scope;
//!   `model` applies it, `train` sets it for a run (and scales the loss in f16), sampling sets
//!   it for its work.
//! - `model` -> genome, diffusion, cpu, precision. The only place a genome meets Burn. `model::bundle` is the
//!   model-bundle format (manifest, hashes, f16 storage; bytes in, no I/O) that `diffnas export`
//!   writes and the browser crate reads.
//! - `data` -> burn, image. `train` -> diffusion, data, cpu, precision (generic over any module and
//!   `Objective`; the run's loss picks the DDPM epsilon loss or IDDPM's `L_hybrid` of a
//!   `Denoiser`).
//! - `eval` -> burn, data, diffusion (the `Denoiser` trait and samplers, for scoring a model),
//!   `model::conv` (the CPU convolution for its extractors), f64 linear algebra (faer).
//!   `eval::setup` finds or makes what scoring needs on disk: the home folder, the extractor,
//!   the reference-statistics cache, the classifier (trained on first use). `eval::heldout` is
//!   the held-out denoising loss (eps-MSE on fixed `(x0, t, noise)` triples); `eval::nll` the
//!   negative log-likelihood in bits per dimension (the full variational bound of
//!   `diffusion::vlb`).
//! - `rundir` -> genome, model, train, data, device, eval: the run-directory format
//!   (`genome.json`, `train.json`, weights) that `train`, every search trial, the block
//!   search's students and every command that opens a model share; training, sampling,
//!   scoring and exporting a run directory.
//! - `trial` -> genome, model, train, diffusion, eval, data, rundir: genome -> trained, scored
//!   trial, its folder a complete run directory.
//! - `search` -> genome, trial (the `Evaluator` trait and the `Proxy` a score was made with),
//!   the trial log (keyed by the hash of the network that is built). `search::config` is
//!   `search.json` (the typed strategy, the `--scale` defaults, the resume check);
//!   `search::rank` the rank statistics (Spearman, Kendall, bootstrap); `search::fidelity` the
//!   proxy-fidelity study and the winner's retraining (it trains through `train` and scores
//!   through `eval`, like a trial); `search::report` the report, charts and the comparison of
//!   runs (refused across proxies, summarised over seeds).
//! - `search::block` -> genome, model, diffusion, train (the one-shot exception: it trains
//!   shared supernet weights and retrains the student through `train`'s `Objective`), data,
//!   rundir, eval. `search::block::pipeline` is the search as phases with typed results.
//! - `bench` -> genome, model, train, diffusion, eval, device: throughput, phase profiles and
//!   memory of training and sampling (`diffnas bench`).
//! - `device` -> burn, wgpu.
//! - `lock` -> std only: the exclusive lock (`flock` on `job.lock`) that every process writing
//!   a run, search, study or trial directory holds; read-only commands take none.
//! - `integrity` -> std only: the once-per-file warning for weights and statistics loaded
//!   without a checksum (written before diffnas recorded them); the CLI prints it.
//! - `cli` -> everything, and nothing points back at it. It only maps arguments to the
//!   library's configurations (whose defaults it shows from the library's `defaults`
//!   modules) and renders progress from the library's events. Library errors are typed; the
//!   exit code is decided once, from the error's type, in `cli::main`.
//!
//! - `web` (the `diffnas-web` crate) -> genome, model, diffusion.
//!
//! `genome`, `model` and `diffusion` build for wasm; everything that touches files, the
//! terminal or the network sits behind the default `cli` feature.

pub mod cpu;
pub mod diffusion;
pub mod eval;
pub mod genome;
pub mod model;
pub mod precision;

#[cfg(feature = "cli")]
pub mod bench;
#[cfg(feature = "cli")]
pub mod cli;
#[cfg(feature = "cli")]
pub mod data;
#[cfg(feature = "cli")]
pub mod device;
#[cfg(feature = "cli")]
pub mod integrity;
#[cfg(feature = "cli")]
pub mod lock;
#[cfg(feature = "cli")]
pub mod rundir;
#[cfg(feature = "cli")]
pub mod search;
#[cfg(feature = "cli")]
pub mod train;
#[cfg(feature = "cli")]
pub mod trial;
