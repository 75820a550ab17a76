//! Integration tests: one binary (see ARCHITECTURE.md), one module per capability.

mod common;

mod cli;
mod data;
mod diffusion;
mod genome;
mod model;
mod train;
mod wgpu_parity;
