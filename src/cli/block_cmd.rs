//! `diffnas search block`: block-wise distillation search from a trained teacher. The phases
//! and their files are the library's (`search::block::pipeline`); this maps the flags to a
//! [`BlockConfig`] and renders progress.

use super::Given;
use super::eval_cmd::{ExtractorArgs, scoring};
use super::progress::{bar, note};
use crate::data::DataSource;
use crate::search::block::distill::DistillEvent;
use crate::search::block::pipeline::{
    self, BlockAsk, BlockConfig, BlockEvent, Phase, ReportInput, Scorer, StudentInit, SupernetInit,
    Teacher, defaults,
};
use crate::search::block::retrain::LambdaSchedule;
use clap::Args;
use indicatif::ProgressBar as Bar;
use std::path::{Path, PathBuf};

/// Arguments of `diffnas search block`.
#[derive(Args, Debug, Clone)]
pub struct BlockArgs {
    /// The teacher: a run directory made by `diffnas train` (its EMA weights, frozen).
    #[arg(long)]
    pub teacher: PathBuf,
    /// Run directory [default: runs/block-<teacher's folder name>].
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Continue a stopped search with the settings in its block.json (a flag that would change
    /// them is refused).
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
    #[arg(long, default_value_t = defaults::SEED)]
    pub seed: u64,
    /// Supernet training steps (every block trains on every step).
    #[arg(long, default_value_t = defaults::SUPERNET_STEPS)]
    pub supernet_steps: u64,
    /// Batch size of supernet training and retraining.
    #[arg(long, default_value_t = defaults::BATCH_SIZE)]
    pub batch_size: usize,
    /// Peak learning rate of every block's AdamW (warm-up 5%, cosine to 10%).
    #[arg(long, default_value_t = defaults::SUPERNET_LR)]
    pub supernet_lr: f64,
    #[arg(long, value_enum, default_value = "fresh")]
    pub supernet_init: SupernetInit,
    /// Batches of the fixed evaluation set every candidate is scored on.
    #[arg(long, default_value_t = defaults::EVAL_BATCHES)]
    pub eval_batches: usize,
    /// A block's path may cost at most this times the teacher-shaped path's loss.
    #[arg(long, default_value_t = defaults::GAMMA)]
    pub gamma: f64,
    /// Gammas of the size/quality frontier written to search/frontier.json.
    #[arg(long, value_delimiter = ',', default_value = defaults::GAMMA_SWEEP)]
    pub gamma_sweep: Vec<f64>,
    /// Global mode instead of gamma: minimise the summed block loss with the whole network
    /// under this many MACs per image.
    #[arg(long)]
    pub budget_macs: Option<u64>,
    /// Score every path of a block with at most this many; sample larger blocks.
    #[arg(long, default_value_t = defaults::MAX_EXHAUSTIVE)]
    pub max_exhaustive: u128,
    /// Sampled blocks: uniform paths first ...
    #[arg(long, default_value_t = defaults::SAMPLES)]
    pub samples: usize,
    /// ... then generations of single-unit mutations of the (MACs, loss) Pareto front ...
    #[arg(long, default_value_t = defaults::ROUNDS)]
    pub rounds: usize,
    /// ... with this many children per front member.
    #[arg(long, default_value_t = defaults::CHILDREN)]
    pub children: usize,
    /// Retraining steps of the student.
    #[arg(long, default_value_t = defaults::RETRAIN_STEPS)]
    pub retrain_steps: u64,
    #[arg(long, default_value_t = defaults::RETRAIN_LR)]
    pub retrain_lr: f64,
    /// lambda(s), the diffusion loss's weight: linear, cosine, step, static:V or
    /// diffusion-only.
    #[arg(long, default_value = defaults::LAMBDA, value_parser = LambdaSchedule::parse)]
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
    #[arg(long, default_value_t = defaults::SCORE_N)]
    pub score_n: usize,
    /// DDIM steps of the scored samples and of the latency measurement.
    #[arg(long, default_value_t = defaults::SCORE_STEPS)]
    pub score_steps: usize,
    /// Images per sampling batch in the latency measurement.
    #[arg(long, default_value_t = defaults::LATENCY_BATCH)]
    pub latency_batch: usize,
    /// The retraining's diffusion loss, simple or hybrid [default: the teacher's; the student
    /// keeps the teacher's head, so another is refused].
    #[arg(long)]
    pub loss: Option<crate::diffusion::LossKind>,
    /// What convolutions and attention matmuls compute in during distillation, retraining and
    /// scoring: f32, f16 (with dynamic loss scaling) or bf16, where the device has it.
    #[arg(long, default_value_t = crate::precision::Precision::default())]
    pub precision: crate::precision::Precision,
    #[command(flatten)]
    pub ext: ExtractorArgs,
}

/// Each flag that sets a field of `block.json`: (argument id, JSON path of the field).
const SETTINGS: [(&str, &str); 26] = [
    ("loss", "retrain.loss"),
    ("precision", "supernet.precision"),
    ("data", "data"),
    ("max_images", "max_images"),
    ("seed", "seed"),
    ("supernet_steps", "supernet.steps"),
    ("batch_size", "supernet.batch_size"),
    ("supernet_lr", "supernet.lr"),
    ("supernet_init", "supernet_init"),
    ("eval_batches", "eval_batches"),
    ("gamma", "gamma"),
    ("gamma_sweep", "gamma_sweep"),
    ("budget_macs", "budget_macs"),
    ("max_exhaustive", "local.max_exhaustive"),
    ("samples", "local.samples"),
    ("rounds", "local.rounds"),
    ("children", "local.children"),
    ("retrain_steps", "retrain.steps"),
    ("retrain_lr", "retrain.lr"),
    ("lambda", "lambda"),
    ("lambda_steps", "lambda_steps"),
    ("student_init", "student_init"),
    ("ablation", "ablation"),
    ("score_n", "score.n"),
    ("score_steps", "score.steps"),
    ("latency_batch", "latency_batch"),
];

/// The configuration the flags describe, for the teacher in `a.teacher`.
fn config_from(a: &BlockArgs) -> anyhow::Result<BlockConfig> {
    Ok(BlockConfig::for_teacher(&BlockAsk {
        teacher: a.teacher.clone(),
        data: a.data.clone(),
        max_images: a.max_images,
        seed: a.seed,
        supernet_steps: a.supernet_steps,
        batch_size: a.batch_size,
        supernet_lr: a.supernet_lr,
        supernet_init: a.supernet_init,
        eval_batches: a.eval_batches,
        gamma: a.gamma,
        gamma_sweep: a.gamma_sweep.clone(),
        budget_macs: a.budget_macs,
        max_exhaustive: a.max_exhaustive,
        samples: a.samples,
        rounds: a.rounds,
        children: a.children,
        retrain_steps: a.retrain_steps,
        retrain_lr: a.retrain_lr,
        lambda: a.lambda,
        lambda_steps: a.lambda_steps,
        student_init: a.student_init,
        ablation: a.ablation,
        score_n: a.score_n,
        score_steps: a.score_steps,
        latency_batch: a.latency_batch,
        loss: a.loss,
        precision: a.precision,
    })?)
}

/// The search's configuration: the stored one on `--resume` (a given flag that differs is
/// refused), else the flags' (with `--reuse`'s supernets), written to `block.json`; with the
/// directory's lock, held while the search runs.
fn resolve(
    a: &BlockArgs,
    given: &Given,
    dir: &Path,
) -> anyhow::Result<(BlockConfig, crate::lock::DirLock)> {
    let fields: Vec<&str> = SETTINGS
        .iter()
        .filter(|(id, _)| given.has(id))
        .map(|(_, f)| *f)
        .collect();
    let flag = |field: &str| {
        let id = SETTINGS.iter().find(|(_, f)| *f == field);
        format!("--{}", id.map_or(field, |(id, _)| id).replace('_', "-"))
    };
    let asked = config_from(a)?;
    Ok(BlockConfig::open(
        dir,
        asked,
        a.resume,
        a.reuse.as_deref(),
        &fields,
        flag,
    )?)
}

/// The progress bar of the phase an event belongs to, made when the phase begins.
struct Render {
    bar: Option<(String, Bar)>,
}

impl Render {
    fn bar(&mut self, key: &str, total: u64) -> &Bar {
        if self.bar.as_ref().is_none_or(|(k, _)| k != key) {
            if let Some((_, b)) = self.bar.take() {
                b.finish_and_clear();
            }
            self.bar = Some((key.to_string(), bar(total, key)));
        }
        &self.bar.as_ref().expect("just set").1
    }

    fn done(&mut self) {
        if let Some((_, b)) = self.bar.take() {
            b.finish_and_clear();
        }
    }

    fn event(&mut self, e: BlockEvent, cfg: &BlockConfig) {
        match e {
            BlockEvent::Distill(names, e) => {
                let pb = self.bar("supernets", cfg.supernet.steps);
                match e {
                    DistillEvent::Started { step, .. } => {
                        pb.set_position(*step);
                        pb.reset_eta();
                        if *step > 0 {
                            note(pb, format!("supernets resumed at step {step}"));
                        }
                    }
                    DistillEvent::Step { step } => pb.set_position(*step),
                    DistillEvent::Note(n) => note(pb, format!("supernets: {n}")),
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
                }
            }
            BlockEvent::Scoring { block, done, total } => {
                self.bar(&format!("search {block}"), total)
                    .set_position(done);
            }
            BlockEvent::BlockScored(t) => {
                self.done();
                eprintln!(
                    "{}: {} paths, {} scored ({}), teacher-shaped loss {:.5}",
                    t.block,
                    t.space_size,
                    t.scored.len(),
                    if t.exhaustive {
                        "exhaustive"
                    } else {
                        "sampled"
                    },
                    t.reference.loss
                );
            }
            BlockEvent::Retrain {
                name,
                event,
                lambda_at,
            } => {
                let pb = self.bar(name, cfg.retrain.steps);
                match event {
                    crate::train::TrainEvent::Started { step, .. } => {
                        pb.set_position(*step);
                        pb.reset_eta();
                    }
                    crate::train::TrainEvent::Step { step } => pb.set_position(*step),
                    crate::train::TrainEvent::Log(r) => {
                        let l = lambda_at(r.step);
                        if pb.is_hidden() {
                            eprintln!("{name} step {} loss {:.5} lambda {l:.2}", r.step, r.loss);
                        } else {
                            pb.set_message(format!("loss {:.4} lambda {l:.2}", r.loss));
                        }
                    }
                    crate::train::TrainEvent::Checkpoint { .. } => {}
                    crate::train::TrainEvent::Note(n) => note(pb, format!("{name}: {n}")),
                }
            }
            BlockEvent::ScoringModel { name, done, total } => {
                self.bar(&format!("score {name}"), total).set_position(done);
            }
            BlockEvent::Measured(r) => {
                self.done();
                eprintln!(
                    "{}: {:.3} M params, {:.3} GMACs, {:.2} s per {} images x {} DDIM steps{}",
                    r.name,
                    r.params as f64 / 1e6,
                    r.macs as f64 / 1e9,
                    r.latency_s,
                    cfg.latency_batch,
                    cfg.score.steps,
                    match (r.score, &r.metric) {
                        (Some(s), Some(m)) => format!(", {m} {s:.3}"),
                        _ => String::new(),
                    }
                );
            }
        }
    }
}

pub fn run(a: BlockArgs, given: &Given) -> anyhow::Result<i32> {
    let selected = super::select_device(a.ext.device)?;
    eprintln!("device: {}", selected.info);
    let dir = a.run_dir.clone().unwrap_or_else(|| {
        let name = a
            .teacher
            .file_name()
            .map_or("teacher".into(), |s| s.to_string_lossy().into_owned());
        PathBuf::from("runs").join(format!("block-{name}"))
    });
    let (cfg, _lock) = resolve(&a, given, &dir)?;
    let device = selected.device.clone();
    let teacher = Teacher::load(&cfg, &device)?;
    eprintln!(
        "teacher {}: {:.3} M params, {:.3} GMACs per image ({})",
        cfg.teacher.display(),
        teacher.cost.params as f64 / 1e6,
        teacher.cost.macs as f64 / 1e9,
        cfg.teacher_weights.display()
    );
    let stop = super::progress::stop_on_ctrlc("writing a checkpoint");
    let mut render = Render { bar: None };
    let mut on = |e: BlockEvent| render.event(e, &cfg);
    let resume_hint = |what: &str, step: u64| {
        eprintln!(
            "stopped {what} at step {step}; continue with: diffnas search block --resume \
             --teacher {} --run-dir {}",
            cfg.teacher.display(),
            dir.display()
        );
        Ok(130)
    };

    let nets = match pipeline::supernets(&cfg, &teacher, &dir, &device, &stop, &mut on)? {
        Phase::Done(n) => n,
        Phase::Stopped(step) => return resume_hint("supernet training", step),
    };
    let tables = pipeline::local_search(&cfg, &teacher, &nets.nets, &dir, &device, &mut on)?;
    let frontier = pipeline::frontier(&cfg, &teacher, &tables, &dir)?;
    let choice = pipeline::choose(&cfg, &teacher, &tables, &dir)?;
    let (ct, cs) = (&teacher.cost, &choice.cost);
    eprintln!(
        "student {}: {:.3} M params ({:.0}% of the teacher), {:.3} GMACs ({:.0}%)",
        choice.genome.hash(),
        cs.params as f64 / 1e6,
        100.0 * cs.params as f64 / ct.params as f64,
        cs.macs as f64 / 1e9,
        100.0 * cs.macs as f64 / ct.macs as f64
    );

    let mut models = vec![("teacher".to_string(), cfg.teacher.clone(), None)];
    for student in pipeline::students(&cfg) {
        let done = pipeline::retrain(
            &cfg,
            &teacher,
            &nets.nets,
            &choice,
            student,
            &dir,
            &selected.info,
            &device,
            &stop,
            &mut on,
        )?;
        match done {
            Phase::Done((sdir, secs)) => {
                eprintln!("{}: retrained in {secs:.0} s", student.0);
                models.push((student.0.to_string(), sdir, Some(secs)));
            }
            Phase::Stopped(step) => return resume_hint(&format!("retraining {}", student.0), step),
        }
    }

    let scorer = (cfg.score.n > 0)
        .then(|| scoring(&a.ext, &cfg.data, teacher.genome.image, &selected))
        .transpose()?;
    let scorer = scorer.as_ref().map(|(e, r)| Scorer {
        extractor: e.as_ref(),
        reference: r,
    });
    let rows = pipeline::measure(&cfg, &models, scorer.as_ref(), &device, &mut on)?;
    let md = pipeline::write_report(
        &cfg,
        &ReportInput {
            rows: &rows,
            frontier: &frontier,
            supernet_seconds: nets.seconds,
            search_seconds: tables.seconds,
            device: &selected.info.to_string(),
        },
        &dir,
    )?;
    eprintln!("report: {}", md.display());
    Ok(0)
}
