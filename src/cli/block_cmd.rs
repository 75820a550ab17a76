//! `diffnas search block`: block-wise distillation search from a trained teacher
//! (ALGORITHMS.md section 6). Phases, each resumable and each leaving its files behind:
//!
//! 1. `supernet/`: block supernets distilled from the teacher (checkpoints, per-block losses).
//! 2. `search/`: every block's scored candidates (`tables.json`), the chosen paths
//!    (`choice.json`) and the `--gamma-sweep` frontier (`frontier.json`).
//! 3. `student/` (and `student-diffusion-only/` with `--ablation`): ordinary run directories
//!    (genome, train.json, checkpoints, EMA weights) retrained with the dynamic joint loss, so
//!    `diffnas sample` and `diffnas eval fid` work on them.
//! 4. `report.md` / `report.json`: teacher vs student parameters, MACs, sampling latency
//!    measured on the device, FD-classifier (or FID), phase wall times.

use super::eval_cmd::{ExtractorArgs, cached_reference, extractor};
use super::progress::{bar, note};
use super::user_err;
use crate::data::{DataSource, Split};
use crate::diffusion::{NoiseSchedule, SamplingRun, make_sampler};
use crate::eval::rfid::{GenerationConfig, score_denoiser};
use crate::genome::{Genome, SearchSpace, cost};
use crate::model::Unet;
use crate::rundir::{LoadedRun, RunFiles, Weights, load_denoiser};
use crate::search::block::distill::{DistillEvent, SUPERNETS_FILE, step_batch, train_supernets};
use crate::search::block::local::{
    BlockTable, LocalSearchConfig, choose_all, global_budget, path_loss, score_block,
};
use crate::search::block::retrain::{JointObjective, LambdaSchedule, student_from_supernets};
use crate::search::block::supernet::BlockSupernet;
use crate::search::block::{Path as GenePath, assemble, block_spaces};
use crate::train::{
    LrSchedule, TrainConfig, TrainEvent, TrainOptions, train_objective, write_atomic,
};
use anyhow::Context;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SupernetInit {
    /// Random initialisation (the paper's setting).
    Fresh,
    /// The teacher's weights in the teacher-shaped path (a warm start).
    Teacher,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StudentInit {
    /// Random initialisation.
    Fresh,
    /// Blocks from the supernets' chosen paths, the rest from the teacher.
    Supernet,
}

/// Arguments of `diffnas search block`.
#[derive(Args, Debug, Clone)]
pub struct BlockArgs {
    /// The teacher: a run directory made by `diffnas train` (its EMA weights, frozen).
    #[arg(long)]
    pub teacher: PathBuf,
    /// Run directory [default: runs/block-<teacher's folder name>].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue a stopped search with the settings in its block.json.
    #[arg(long)]
    pub resume: bool,
    /// Start from another block search's trained supernets and scored candidates (same
    /// teacher; its supernet, evaluation-set and candidate settings are taken over), e.g. to
    /// retrain at another --gamma or --budget-macs without training the supernets again.
    #[arg(long, value_name = "BLOCK_RUN_DIR")]
    pub reuse: Option<PathBuf>,
    /// Training data [default: the teacher's].
    #[arg(long)]
    pub data: Option<DataSource>,
    /// Use only the first N training images.
    #[arg(long)]
    pub max_images: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Supernet training steps (every block trains on every step).
    #[arg(long, default_value_t = 1000)]
    pub supernet_steps: u64,
    /// Batch size of supernet training and retraining.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Peak learning rate of every block's AdamW (warm-up 5%, cosine to 10%).
    #[arg(long, default_value_t = 1e-3)]
    pub supernet_lr: f64,
    #[arg(long, value_enum, default_value = "fresh")]
    pub supernet_init: SupernetInit,
    /// Batches of the fixed evaluation set every candidate is scored on.
    #[arg(long, default_value_t = 4)]
    pub eval_batches: usize,
    /// A block's path may cost at most this times the teacher-shaped path's loss.
    #[arg(long, default_value_t = 1.0)]
    pub gamma: f64,
    /// Gammas of the size/quality frontier written to search/frontier.json.
    #[arg(long, value_delimiter = ',', default_value = "0.9,1,1.1,1.25,1.5,2,3")]
    pub gamma_sweep: Vec<f64>,
    /// Global mode instead of gamma: minimise the summed block loss with the whole network
    /// under this many MACs per image.
    #[arg(long)]
    pub budget_macs: Option<u64>,
    /// Score every path of a block with at most this many; sample larger blocks.
    #[arg(long, default_value_t = 1296)]
    pub max_exhaustive: u128,
    /// Sampled blocks: uniform paths first ...
    #[arg(long, default_value_t = 300)]
    pub samples: usize,
    /// ... then generations of single-unit mutations of the (MACs, loss) Pareto front ...
    #[arg(long, default_value_t = 4)]
    pub rounds: usize,
    /// ... with this many children per front member.
    #[arg(long, default_value_t = 8)]
    pub children: usize,
    /// Retraining steps of the student.
    #[arg(long, default_value_t = 1000)]
    pub retrain_steps: u64,
    #[arg(long, default_value_t = 5e-4)]
    pub retrain_lr: f64,
    /// lambda(s), the diffusion loss's weight: linear, cosine, step, static:V or
    /// diffusion-only.
    #[arg(long, default_value = "linear", value_parser = LambdaSchedule::parse)]
    pub lambda: LambdaSchedule,
    /// Steps over which lambda rises from 0 to 1 [default: half of --retrain-steps].
    #[arg(long)]
    pub lambda_steps: Option<u64>,
    #[arg(long, value_enum, default_value = "supernet")]
    pub student_init: StudentInit,
    /// Also retrain the student with the diffusion loss only (the ablation of the joint loss).
    #[arg(long)]
    pub ablation: bool,
    /// Samples scored for the teacher and each student (0: no scoring).
    #[arg(long, default_value_t = 2000)]
    pub score_n: usize,
    /// DDIM steps of the scored samples and of the latency measurement.
    #[arg(long, default_value_t = 20)]
    pub score_steps: usize,
    /// Images per sampling batch in the latency measurement.
    #[arg(long, default_value_t = 16)]
    pub latency_batch: usize,
    #[command(flatten)]
    pub ext: ExtractorArgs,
}

/// `block.json`: everything that determines the search.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BlockConfig {
    pub teacher: PathBuf,
    pub teacher_weights: PathBuf,
    pub data: DataSource,
    pub max_images: Option<usize>,
    pub seed: u64,
    pub supernet: TrainConfig,
    pub supernet_init: SupernetInit,
    pub eval_batches: usize,
    pub kernels: Vec<usize>,
    pub hidden_mults: Vec<f64>,
    pub gamma: f64,
    pub gamma_sweep: Vec<f64>,
    pub budget_macs: Option<u64>,
    pub local: LocalSearchConfig,
    pub retrain: TrainConfig,
    pub lambda: LambdaSchedule,
    pub lambda_steps: u64,
    pub student_init: StudentInit,
    pub ablation: bool,
    pub score: GenerationConfig,
    pub latency_batch: usize,
}

fn short_schedule(base: &TrainConfig, steps: u64, batch: usize, lr: f64, seed: u64) -> TrainConfig {
    base.clone()
        .with_steps(steps)
        .with_batch_size(batch)
        .with_lr(lr)
        .with_warmup_steps((steps / 20).max(1))
        .with_lr_schedule(LrSchedule::Cosine)
        .with_min_lr_ratio(0.1)
        .with_ema_decay(0.999)
        .with_ema_warmup(true)
        .with_seed(seed)
        .with_checkpoint_every((steps / 10).max(1))
        .with_log_every(25)
}

fn read_json<T: serde::de::DeserializeOwned>(p: &Path) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(p).map_err(|e| user_err(format!("{}: {e}", p.display())))?;
    serde_json::from_str(&text).map_err(|e| user_err(format!("{}: {e}", p.display())))
}

fn write_json<T: Serialize>(p: &Path, v: &T) -> anyhow::Result<()> {
    if let Some(d) = p.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    write_atomic(p, serde_json::to_string_pretty(v)?.as_bytes())?;
    Ok(())
}

/// `search/tables.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Tables {
    pub tables: Vec<BlockTable>,
    pub seconds: f64,
}

/// One row of the gamma frontier.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FrontierRow {
    pub gamma: f64,
    pub params: u64,
    pub macs: u64,
    pub macs_ratio: f64,
    pub params_ratio: f64,
    /// Sum over blocks of the chosen paths' losses.
    pub loss: f64,
    pub genome_hash: String,
}

/// What `report.json` holds for one model.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRow {
    pub name: String,
    pub run_dir: PathBuf,
    pub params: u64,
    pub macs: u64,
    /// Seconds for one DDIM sampling run of `latency_batch` images.
    pub latency_s: f64,
    pub score: Option<f64>,
    pub metric: Option<String>,
    pub train_seconds: Option<f64>,
}

pub fn run(a: BlockArgs) -> anyhow::Result<i32> {
    let selected = super::select_device(a.ext.device)?;
    eprintln!("device: {}", selected.info);
    let dir = a.run_dir.clone().unwrap_or_else(|| {
        let name = a
            .teacher
            .file_name()
            .map_or("teacher".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(format!("block-{name}"))
    });
    let plain = selected.device.clone();
    let LoadedRun {
        model: teacher,
        genome: tg,
        files: tfiles,
        weights: tweights,
    } = load_denoiser(&a.teacher, Weights::Ema, &plain)?;
    let cfg_path = dir.join("block.json");
    let cfg: BlockConfig = if a.resume {
        read_json(&cfg_path).map_err(|e| user_err(format!("{e} (nothing to resume)")))?
    } else {
        if cfg_path.exists() {
            return Err(user_err(format!(
                "{} already holds a block search; continue it with --resume or pick another \
                 --run-dir",
                dir.display()
            )));
        }
        for (name, g) in std::iter::once(("--gamma", a.gamma))
            .chain(a.gamma_sweep.iter().map(|g| ("--gamma-sweep", *g)))
        {
            if !(g.is_finite() && g > 0.0) {
                return Err(user_err(format!("{name} {g}: must be a positive number")));
            }
        }
        if a.eval_batches == 0 || a.batch_size == 0 {
            return Err(user_err(
                "--eval-batches and --batch-size must be at least 1",
            ));
        }
        let space = SearchSpace::for_image(tg.image);
        let base = &tfiles.config;
        let c = BlockConfig {
            teacher: a.teacher.clone(),
            teacher_weights: tweights.clone(),
            data: a.data.clone().unwrap_or_else(|| tfiles.data.clone()),
            max_images: a.max_images.or(tfiles.max_images),
            seed: a.seed,
            supernet: short_schedule(base, a.supernet_steps, a.batch_size, a.supernet_lr, a.seed),
            supernet_init: a.supernet_init,
            eval_batches: a.eval_batches,
            kernels: space.kernels.clone(),
            hidden_mults: space.hidden_mults.clone(),
            gamma: a.gamma,
            gamma_sweep: a.gamma_sweep.clone(),
            budget_macs: a.budget_macs,
            local: LocalSearchConfig {
                max_exhaustive: a.max_exhaustive,
                samples: a.samples,
                rounds: a.rounds,
                children: a.children,
                seed: a.seed,
            },
            retrain: short_schedule(base, a.retrain_steps, a.batch_size, a.retrain_lr, a.seed),
            lambda: a.lambda,
            lambda_steps: a.lambda_steps.unwrap_or(a.retrain_steps / 2),
            student_init: a.student_init,
            ablation: a.ablation,
            score: GenerationConfig {
                n: a.score_n,
                steps: a.score_steps,
                ..GenerationConfig::rfid()
            },
            latency_batch: a.latency_batch.max(1),
        };
        c.supernet.check().map_err(user_err)?;
        c.retrain.check().map_err(user_err)?;
        let c = match &a.reuse {
            Some(from) => reuse(from, &dir, c)?,
            None => c,
        };
        write_json(&cfg_path, &c)?;
        c
    };
    let cost_t = cost(&tg).map_err(|e| user_err(e.to_string()))?;
    eprintln!(
        "teacher {}: {:.3} M params, {:.3} GMACs per image ({})",
        a.teacher.display(),
        cost_t.params as f64 / 1e6,
        cost_t.macs as f64 / 1e9,
        tweights.display()
    );
    let data = cfg
        .data
        .load_for(
            Split::Train,
            cfg.max_images,
            tg.image.channels,
            tg.image.size,
        )
        .map_err(|e| user_err(e.to_string()))?;
    let spaces =
        block_spaces(&tg, &cfg.kernels, &cfg.hidden_mults).map_err(|e| user_err(e.to_string()))?;
    let stop = super::progress::stop_on_ctrlc("writing a checkpoint");
    let ad = plain.clone().autodiff();

    // 1. Supernets.
    let sdir = dir.join("supernet");
    let final_nets = sdir.join(SUPERNETS_FILE);
    let fresh_nets = |device: &Device| -> Vec<BlockSupernet> {
        device.seed(cfg.seed);
        spaces
            .iter()
            .map(|s| {
                let n = BlockSupernet::new(&tg, s, device);
                match cfg.supernet_init {
                    SupernetInit::Fresh => n,
                    SupernetInit::Teacher => n.load_teacher(&teacher),
                }
            })
            .collect()
    };
    let (nets, supernet_seconds) = if final_nets.is_file() {
        let nets = fresh_nets(&plain)
            .try_load_file(&final_nets)
            .map_err(|e| anyhow::anyhow!("{}: {e}", final_nets.display()))?;
        let st = crate::train::checkpoint::read_state(&sdir)
            .ok()
            .or_else(|| {
                crate::train::checkpoint::latest(&sdir)
                    .and_then(|ck| crate::train::checkpoint::read_state(&ck).ok())
            });
        (nets, st.map_or(0.0, |s| s.elapsed_s))
    } else {
        let total = cfg.supernet.steps;
        let pb = bar(total, "supernets");
        let names: Vec<String> = spaces.iter().map(|s| s.id.to_string()).collect();
        let mut on = |e: &DistillEvent| match e {
            DistillEvent::Started { step, .. } => {
                pb.set_position(*step);
                pb.reset_eta();
                if *step > 0 {
                    note(&pb, format!("supernets resumed at step {step}"));
                }
            }
            DistillEvent::Step { step } => pb.set_position(*step),
            DistillEvent::Log(r) => {
                let msg = names
                    .iter()
                    .zip(&r.losses)
                    .map(|(n, l)| format!("{n} {l:.4}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                if pb.is_hidden() {
                    eprintln!("step {}: {msg}", r.step);
                } else {
                    pb.set_message(msg);
                }
            }
        };
        let out = train_supernets(
            &teacher,
            &spaces,
            fresh_nets(&ad),
            &data,
            &cfg.supernet,
            &ad,
            Some(&sdir),
            Some(&stop),
            &mut on,
        )
        .context("supernet training failed")?;
        pb.finish_and_clear();
        if !out.finished {
            eprintln!(
                "stopped at supernet step {}; continue with: diffnas search block --resume \
                 --teacher {} --run-dir {}",
                out.state.step,
                a.teacher.display(),
                dir.display()
            );
            return Ok(130);
        }
        let nets: Vec<BlockSupernet> = out.nets.into_iter().map(|n| n.valid()).collect();
        nets.clone()
            .save_file(&final_nets)
            .map_err(|e| anyhow::anyhow!("{}: {e}", final_nets.display()))?;
        write_json(&sdir.join(crate::train::STATE_FILE), &out.state)?;
        eprintln!("supernets trained in {:.0} s", out.state.elapsed_s);
        (nets, out.state.elapsed_s)
    };

    // 2. Local search.
    let tables_path = dir.join("search").join("tables.json");
    let tables: Tables = if tables_path.is_file() {
        read_json(&tables_path)?
    } else {
        let t0 = Instant::now();
        let schedule = NoiseSchedule::new(cfg.supernet.beta_schedule, cfg.supernet.timesteps)
            .map_err(|e| user_err(e.to_string()))?;
        // A fixed evaluation set: its own stream, never a training step's.
        let eval_cfg = cfg.supernet.clone().with_seed(cfg.seed ^ 0x0e7a_15e7);
        let mut batcher = crate::data::Batcher::new(eval_cfg.seed, eval_cfg.batch_size, data.len);
        let mut per_block: Vec<Vec<crate::model::BlockIo>> = vec![Vec::new(); spaces.len()];
        let mut embs: Vec<Tensor<2>> = Vec::new();
        for s in 0..cfg.eval_batches as u64 {
            let x0 = data.batch(&batcher.indices(s), &plain);
            let (x_t, t) = step_batch(&eval_cfg, &schedule, x0, s);
            let tr = teacher.trace(x_t, t);
            embs.push(tr.emb);
            for (b, io) in tr.blocks.into_iter().enumerate() {
                per_block[b].push(io);
            }
        }
        let mut tables = Vec::new();
        for ((space, net), evals) in spaces.iter().zip(&nets).zip(&per_block) {
            let size = space.size();
            let n = if size <= cfg.local.max_exhaustive {
                size as u64 + 1
            } else {
                (cfg.local.samples + 1) as u64
            };
            let pb = bar(n, &format!("search {}", space.id));
            let t = score_block(
                space,
                &tg,
                |p| path_loss(net, p, evals, &embs),
                &cfg.local,
                |k| pb.set_position(k as u64),
            );
            pb.finish_and_clear();
            eprintln!(
                "{}: {} paths, {} scored ({}), teacher-shaped loss {:.5}",
                space.id,
                t.space_size,
                t.scored.len(),
                if t.exhaustive {
                    "exhaustive"
                } else {
                    "sampled"
                },
                t.reference.loss
            );
            tables.push(t);
        }
        let t = Tables {
            tables,
            seconds: t0.elapsed().as_secs_f64(),
        };
        write_json(&tables_path, &t)?;
        t
    };
    let pick = |idx: &[usize]| -> Vec<(crate::model::BlockId, GenePath)> {
        tables
            .tables
            .iter()
            .zip(idx)
            .map(|(t, &i)| (t.block, t.scored[i].path.clone()))
            .collect()
    };
    let frontier: Vec<FrontierRow> = cfg
        .gamma_sweep
        .iter()
        .map(|&gamma| {
            let idx = choose_all(&tables.tables, gamma);
            let g = assemble(&tg, &pick(&idx));
            let c = cost(&g).expect("assembled genomes are valid");
            FrontierRow {
                gamma,
                params: c.params,
                macs: c.macs,
                macs_ratio: c.macs as f64 / cost_t.macs as f64,
                params_ratio: c.params as f64 / cost_t.params as f64,
                loss: tables
                    .tables
                    .iter()
                    .zip(&idx)
                    .map(|(t, &i)| t.scored[i].loss)
                    .sum(),
                genome_hash: g.hash(),
            }
        })
        .collect();
    write_json(&dir.join("search").join("frontier.json"), &frontier)?;
    let chosen = match cfg.budget_macs {
        None => choose_all(&tables.tables, cfg.gamma),
        Some(budget) => {
            let block_macs: u64 = spaces
                .iter()
                .map(|s| s.cost(&s.teacher_path(), &tg).macs)
                .sum();
            let fixed = cost_t.macs - block_macs;
            let scored: Vec<Vec<_>> = tables.tables.iter().map(|t| t.scored.clone()).collect();
            global_budget(&scored, budget.saturating_sub(fixed)).ok_or_else(|| {
                user_err(format!(
                    "--budget-macs {budget}: no combination of the scored paths fits (the \
                     parts outside the blocks alone take {fixed} MACs)"
                ))
            })?
        }
    };
    let choice = pick(&chosen);
    let sg = assemble(&tg, &choice);
    SearchSpace::for_image(sg.image)
        .validate(&sg)
        .map_err(|e| anyhow::anyhow!("the assembled student is invalid:\n{e}"))?;
    let cost_s = cost(&sg).map_err(|e| user_err(e.to_string()))?;
    write_json(
        &dir.join("search").join("choice.json"),
        &serde_json::json!({
            "mode": match cfg.budget_macs {
                None => format!("gamma {}", cfg.gamma),
                Some(b) => format!("global budget {b} MACs"),
            },
            "blocks": tables.tables.iter().zip(&chosen).map(|(t, &i)| serde_json::json!({
                "block": t.block.to_string(),
                "path": t.scored[i].path,
                "loss": t.scored[i].loss,
                "reference_loss": t.reference.loss,
                "macs": t.scored[i].cost.macs,
                "reference_macs": t.reference.cost.macs,
            })).collect::<Vec<_>>(),
            "params": cost_s.params,
            "macs": cost_s.macs,
        }),
    )?;
    eprintln!(
        "student {}: {:.3} M params ({:.0}% of the teacher), {:.3} GMACs ({:.0}%)",
        sg.hash(),
        cost_s.params as f64 / 1e6,
        100.0 * cost_s.params as f64 / cost_t.params as f64,
        cost_s.macs as f64 / 1e9,
        100.0 * cost_s.macs as f64 / cost_t.macs as f64
    );

    // 3. Retraining.
    let paths: Vec<GenePath> = choice.iter().map(|(_, p)| p.clone()).collect();
    let mut students = vec![("student", cfg.lambda)];
    if cfg.ablation {
        students.push(("student-diffusion-only", LambdaSchedule::DiffusionOnly));
    }
    let mut trained: Vec<(String, PathBuf, f64)> = Vec::new();
    for (name, lambda) in students {
        let sdir = dir.join(name);
        let files = RunFiles {
            config: cfg.retrain.clone(),
            data: cfg.data.clone(),
            max_images: cfg.max_images,
            device: selected.info.clone(),
        };
        files.write(&sdir, &sg)?;
        let init = sdir.join("init.bpk");
        if !init.is_file() {
            plain.seed(cfg.seed);
            let fresh = Unet::new(&sg, &plain).map_err(|e| user_err(e.to_string()))?;
            let m = match cfg.student_init {
                StudentInit::Fresh => fresh,
                StudentInit::Supernet => student_from_supernets(fresh, &teacher, &nets, &paths),
            };
            m.save_file(&init)
                .map_err(|e| anyhow::anyhow!("{}: {e}", init.display()))?;
        }
        let model = Unet::new(&sg, &ad)
            .map_err(|e| user_err(e.to_string()))?
            .try_load_file(&init)
            .map_err(|e| anyhow::anyhow!("{}: {e}", init.display()))?;
        let objective = JointObjective {
            teacher: teacher.valid(),
            schedule: lambda,
            ramp: cfg.lambda_steps,
        };
        let pb = bar(cfg.retrain.steps, name);
        let mut on = |e: &TrainEvent| match e {
            TrainEvent::Started { step, .. } => {
                pb.set_position(*step);
                pb.reset_eta();
            }
            TrainEvent::Step { step } => pb.set_position(*step),
            TrainEvent::Log(r) => {
                let l = lambda.at(r.step, cfg.lambda_steps);
                if pb.is_hidden() {
                    eprintln!("{name} step {} loss {:.5} lambda {l:.2}", r.step, r.loss);
                } else {
                    pb.set_message(format!("loss {:.4} lambda {l:.2}", r.loss));
                }
            }
            TrainEvent::Checkpoint { .. } => {}
        };
        let out = train_objective(
            model,
            &data,
            &cfg.retrain,
            &ad,
            TrainOptions {
                run_dir: Some(&sdir),
                resume: true,
                stop: Some(&stop),
                stop_at: None,
            },
            &objective,
            &mut on,
        )
        .with_context(|| format!("retraining {name} failed"))?;
        pb.finish_and_clear();
        if out.status != crate::train::TrainStatus::Finished {
            eprintln!(
                "stopped retraining {name} at step {}; continue with: diffnas search block \
                 --resume --teacher {} --run-dir {}",
                out.state.step,
                a.teacher.display(),
                dir.display()
            );
            return Ok(130);
        }
        eprintln!("{name}: retrained in {:.0} s", out.state.elapsed_s);
        trained.push((name.to_string(), sdir, out.state.elapsed_s));
    }

    // 4. Latency and scores.
    let mut rows = Vec::new();
    let mut models: Vec<(String, PathBuf, Option<f64>)> =
        vec![("teacher".into(), a.teacher.clone(), None)];
    models.extend(trained.into_iter().map(|(n, d, s)| (n, d, Some(s))));
    let scorer = if cfg.score.n > 0 {
        super::eval_cmd::ensure_extractor(&a.ext, &cfg.data)?;
        let ext = extractor(&a.ext, &cfg.data, &selected)?;
        let spec = [tg.image.channels, tg.image.size, tg.image.size];
        let reference = cached_reference(
            ext.as_ref(),
            &cfg.data,
            super::eval_cmd::SplitArg::Train,
            spec,
        )?;
        Some((ext, reference))
    } else {
        None
    };
    for (name, mdir, secs) in models {
        let LoadedRun {
            model: m,
            genome: g,
            files,
            ..
        } = load_denoiser(&mdir, Weights::Ema, &plain)?;
        let c = cost(&g).map_err(|e| user_err(e.to_string()))?;
        let schedule = NoiseSchedule::new(files.config.beta_schedule, files.config.timesteps)
            .map_err(|e| user_err(e.to_string()))?;
        let latency = sampling_latency(&m, &schedule, &g, &cfg, &plain);
        let (score, metric) = match &scorer {
            Some((ext, reference)) => {
                let pb = bar(cfg.score.n as u64, &format!("score {name}"));
                let s = score_denoiser(
                    &m,
                    schedule,
                    [g.image.channels, g.image.size, g.image.size],
                    &cfg.score,
                    ext.as_ref(),
                    reference,
                    None,
                    &plain,
                    &mut |k| pb.set_position(k as u64),
                )
                .with_context(|| format!("scoring {name}"))?;
                pb.finish_and_clear();
                (Some(s.value), Some(s.metric.clone()))
            }
            None => (None, None),
        };
        eprintln!(
            "{name}: {:.3} M params, {:.3} GMACs, {latency:.2} s per {} images x {} DDIM steps{}",
            c.params as f64 / 1e6,
            c.macs as f64 / 1e9,
            cfg.latency_batch,
            cfg.score.steps,
            match (score, &metric) {
                (Some(s), Some(m)) => format!(", {m} {s:.3}"),
                _ => String::new(),
            }
        );
        rows.push(ModelRow {
            name,
            run_dir: mdir,
            params: c.params,
            macs: c.macs,
            latency_s: latency,
            score,
            metric,
            train_seconds: secs,
        });
    }
    let report = serde_json::json!({
        "teacher": a.teacher,
        "device": selected.info.to_string(),
        "phases_s": {
            "supernet": supernet_seconds,
            "search": tables.seconds,
            "retrain": rows.iter().filter_map(|r| r.train_seconds).collect::<Vec<_>>(),
        },
        "models": rows,
        "frontier": frontier,
        "score_n": cfg.score.n,
        "score_steps": cfg.score.steps,
        "latency_batch": cfg.latency_batch,
    });
    write_json(&dir.join("report.json"), &report)?;
    std::fs::write(
        dir.join("report.md"),
        markdown(
            &cfg,
            &rows,
            &frontier,
            supernet_seconds,
            tables.seconds,
            &selected.info.to_string(),
        ),
    )
    .with_context(|| format!("writing {}", dir.join("report.md").display()))?;
    eprintln!("report: {}", dir.join("report.md").display());
    Ok(0)
}

/// Take over `from`'s supernet and candidate settings and copy its trained supernets and
/// scored tables into `dir`; everything after the local search is `c`'s own.
fn reuse(from: &Path, dir: &Path, c: BlockConfig) -> anyhow::Result<BlockConfig> {
    let old: BlockConfig = read_json(&from.join("block.json"))?;
    if old.teacher_weights != c.teacher_weights {
        return Err(user_err(format!(
            "--reuse {}: its teacher is {}, not {}",
            from.display(),
            old.teacher_weights.display(),
            c.teacher_weights.display()
        )));
    }
    let files = [
        format!("supernet/{SUPERNETS_FILE}"),
        format!("supernet/{}", crate::train::STATE_FILE),
        "supernet/distill-log.jsonl".to_string(),
        "search/tables.json".to_string(),
    ];
    for f in &files[..1] {
        if !from.join(f).is_file() {
            return Err(user_err(format!(
                "--reuse {}: {f} is missing (its supernets have not finished training)",
                from.display()
            )));
        }
    }
    for f in &files {
        let (mut src, dst) = (from.join(f), dir.join(f));
        if !src.is_file()
            && f.ends_with(crate::train::STATE_FILE)
            && let Some(ck) = crate::train::checkpoint::latest(&from.join("supernet"))
        {
            // Runs written before the final state was kept: the newest checkpoint's.
            src = ck.join(crate::train::STATE_FILE);
        }
        if src.is_file() {
            std::fs::create_dir_all(dst.parent().expect("has a parent"))?;
            std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
        }
    }
    Ok(BlockConfig {
        data: old.data,
        max_images: old.max_images,
        seed: old.seed,
        supernet: old.supernet,
        supernet_init: old.supernet_init,
        eval_batches: old.eval_batches,
        kernels: old.kernels,
        hidden_mults: old.hidden_mults,
        local: old.local,
        ..c
    })
}

/// Wall time of one DDIM sampling run of `latency_batch` images, the fastest of three, after a
/// one-step warm-up that absorbs kernel compilation on a GPU.
fn sampling_latency(
    m: &Unet,
    schedule: &NoiseSchedule,
    g: &Genome,
    cfg: &BlockConfig,
    device: &Device,
) -> f64 {
    let shape = [g.image.channels, g.image.size, g.image.size];
    let warm = make_sampler(cfg.score.sampler, schedule.clone(), 1, 0.0);
    let _ = SamplingRun::new(warm.as_ref(), 0, 0, cfg.latency_batch, shape, device)
        .run(m, &mut |_, _| {})
        .into_data();
    let sampler = make_sampler(cfg.score.sampler, schedule.clone(), cfg.score.steps, 0.0);
    // The fastest of three runs: other work on the machine only ever adds time.
    (0..3)
        .map(|_| {
            let t0 = Instant::now();
            let _ = SamplingRun::new(sampler.as_ref(), 0, 0, cfg.latency_batch, shape, device)
                .run(m, &mut |_, _| {})
                .into_data();
            t0.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn markdown(
    cfg: &BlockConfig,
    rows: &[ModelRow],
    frontier: &[FrontierRow],
    supernet_s: f64,
    search_s: f64,
    device: &str,
) -> String {
    let t = &rows[0];
    let mut s = format!(
        "# Block-wise distillation search\n\nTeacher `{}` on {}; device {device}.\n\n",
        cfg.teacher.display(),
        cfg.data
    );
    s += &format!(
        "| model | params | MACs / image | params vs teacher | MACs vs teacher | sampling latency ({} images, {} DDIM steps) | {} (N = {}) | retraining |\n|---|---|---|---|---|---|---|---|\n",
        cfg.latency_batch,
        cfg.score.steps,
        rows.iter()
            .find_map(|r| r.metric.clone())
            .unwrap_or("score".into()),
        cfg.score.n
    );
    for r in rows {
        s += &format!(
            "| {} | {} | {} | {:.1}% | {:.1}% | {:.2} s | {} | {} |\n",
            r.name,
            r.params,
            r.macs,
            100.0 * r.params as f64 / t.params as f64,
            100.0 * r.macs as f64 / t.macs as f64,
            r.latency_s,
            r.score.map_or("-".into(), |v| format!("{v:.3}")),
            r.train_seconds.map_or("-".into(), |v| format!("{v:.0} s")),
        );
    }
    s += &format!(
        "\nPhases: supernets {supernet_s:.0} s ({} steps, batch {}), local search {search_s:.0} s \
         ({} evaluation batches), retraining {} steps with lambda {} rising over {} steps.\n",
        cfg.supernet.steps,
        cfg.supernet.batch_size,
        cfg.eval_batches,
        cfg.retrain.steps,
        cfg.lambda,
        cfg.lambda_steps
    );
    s += "\n## Gamma frontier (cheapest path per block with loss <= gamma x teacher-shaped)\n\n\
          | gamma | params | MACs | MACs vs teacher | summed block loss |\n|---|---|---|---|---|\n";
    for f in frontier {
        s += &format!(
            "| {} | {} | {} | {:.1}% | {:.5} |\n",
            f.gamma,
            f.params,
            f.macs,
            100.0 * f.macs_ratio,
            f.loss
        );
    }
    s
}
