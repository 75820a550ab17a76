//! Integration tests: one binary (see ARCHITECTURE.md), one module per capability.

mod common;

mod block;
mod cli;
mod data;
mod diffusion;
mod eval;
mod export;
mod fd_classifier;
mod fetch;
mod fuzz;
mod genome;
mod llm;
mod model;
mod precision;
mod search;
mod slurm;
mod train;
mod trial;
mod vlb;
mod web;
// Needs the wgpu backend: a CPU-only build (`--no-default-features --features cli`) has none.
#[cfg(feature = "wgpu")]
mod wgpu_parity;
