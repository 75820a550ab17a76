//! `diffnas genome`: presets, validation with JSON paths, cost.

use super::user_err;
use crate::genome::{Genome, SearchSpace, cost};
use clap::Subcommand;

#[derive(Subcommand, Debug)]
pub enum GenomeCmd {
    /// Print a preset as JSON (tiny, fmnist-small, ddpm-cifar10, iddpm-cifar10).
    Show { preset: String },
    /// Validate a genome JSON file against the structural rules and the default search space
    /// for its image size; print its cost. Exits 2 with the path of every bad field.
    Validate {
        file: String,
        /// Only structural checks (skip search-space membership).
        #[arg(long)]
        structural: bool,
    },
    /// Parameters, MACs per image and activation estimate of a preset or a JSON file.
    Cost {
        genome: String,
        /// Print one JSON object (hash, params, macs, activation_floats, genome) instead of text,
        /// for scripts such as the PyTorch reference benchmark.
        #[arg(long)]
        json: bool,
    },
    /// List the preset names.
    List,
}

/// A preset name or a JSON file; structurally checked.
/// [`Genome::load`] for a `--genome` flag.
pub fn load_genome(arg: &str) -> anyhow::Result<Genome> {
    Genome::load(arg).map_err(|e| anyhow::Error::new(e).context("--genome"))
}

fn print_cost(g: &Genome) -> anyhow::Result<()> {
    let c = cost(g)?;
    println!(
        "params: {} ({:.3} M)\nMACs per image: {} ({:.3} G)\nactivation estimate: {:.1} MiB per image (f32)",
        c.params,
        c.params as f64 / 1e6,
        c.macs,
        c.macs as f64 / 1e9,
        c.activation_bytes(1) as f64 / (1024.0 * 1024.0)
    );
    Ok(())
}

pub fn run(cmd: GenomeCmd) -> anyhow::Result<i32> {
    match cmd {
        GenomeCmd::List => {
            for p in Genome::PRESETS {
                println!("{p}");
            }
        }
        GenomeCmd::Show { preset } => {
            let g = Genome::preset(&preset).ok_or_else(|| {
                user_err(format!(
                    "unknown preset {preset:?}; presets are {}",
                    Genome::PRESETS.join(", ")
                ))
            })?;
            println!("{}", g.to_json_pretty());
        }
        GenomeCmd::Cost { genome, json } => {
            let g = load_genome(&genome)?;
            if json {
                let c = cost(&g)?;
                let out = serde_json::json!({
                    "hash": g.hash(),
                    "params": c.params,
                    "macs": c.macs,
                    "activation_floats": c.activation_floats,
                    "genome": g,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                print_cost(&g)?;
            }
        }
        GenomeCmd::Validate { file, structural } => {
            let g = Genome::read_file(&file)?;
            let res = if structural {
                g.check()
            } else {
                SearchSpace::for_image(g.image).validate(&g)
            };
            if let Err(errs) = res {
                return Err(user_err(format!("{file}: invalid genome:\n{errs}")));
            }
            println!("{file}: valid (hash {})", g.hash());
            print_cost(&g)?;
        }
    }
    Ok(0)
}
