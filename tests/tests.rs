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
mod genome;
mod llm;
mod model;
mod search;
mod train;
mod trial;
mod web;
mod wgpu_parity;
