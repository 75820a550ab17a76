//! Retraining the assembled student with the dynamic joint loss (ALGORITHMS.md section 6):
//!
//! `L(s) = (1 - lambda(s)) * sum_b MSE(teacher block b, student block b on teacher inputs)
//!         + lambda(s) * MSE(eps, student(x_t, t))`
//!
//! The student's blocks run on the teacher's block inputs (and skips) with the student's own
//! timestep embedding. lambda rises from 0 to 1 over `S` steps.

use super::distill::block_loss;
use crate::diffusion::vlb::{LossKind, hybrid_loss};
use crate::diffusion::{Denoiser, eps_loss};
use crate::model::Unet;
use crate::train::{Objective, StepBatch};
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};
use std::f64::consts::PI;

/// How lambda (the weight of the diffusion loss) moves over training.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "kind", content = "value")]
pub enum LambdaSchedule {
    /// `s / S`, then 1 (the default).
    Linear,
    /// `(1 - cos(pi s / S)) / 2`, then 1.
    Cosine,
    /// 0 for `s < S` (pure distillation), then 1 (pure diffusion).
    Step,
    /// A constant (ablation).
    Static(f64),
    /// Always 1: plain diffusion training, no teacher (ablation).
    DiffusionOnly,
}

impl LambdaSchedule {
    /// lambda at step `s` of a ramp of `ramp` steps.
    pub fn at(&self, s: u64, ramp: u64) -> f64 {
        let x = if ramp == 0 {
            1.0
        } else {
            (s as f64 / ramp as f64).min(1.0)
        };
        match self {
            LambdaSchedule::Linear => x,
            LambdaSchedule::Cosine => (1.0 - (PI * x).cos()) / 2.0,
            LambdaSchedule::Step => {
                if s < ramp {
                    0.0
                } else {
                    1.0
                }
            }
            LambdaSchedule::Static(v) => *v,
            LambdaSchedule::DiffusionOnly => 1.0,
        }
    }

    /// Parse `linear`, `cosine`, `step`, `static:V`, `diffusion-only`.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "linear" => LambdaSchedule::Linear,
            "cosine" => LambdaSchedule::Cosine,
            "step" => LambdaSchedule::Step,
            "diffusion-only" => LambdaSchedule::DiffusionOnly,
            _ => match s.strip_prefix("static:").map(str::parse::<f64>) {
                Some(Ok(v)) if (0.0..=1.0).contains(&v) => LambdaSchedule::Static(v),
                Some(_) => return Err(format!("{s}: a static lambda must be a number in [0, 1]")),
                None => {
                    return Err(format!(
                        "{s}: expected linear, cosine, step, static:V or diffusion-only"
                    ));
                }
            },
        })
    }
}

impl std::fmt::Display for LambdaSchedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LambdaSchedule::Linear => write!(f, "linear"),
            LambdaSchedule::Cosine => write!(f, "cosine"),
            LambdaSchedule::Step => write!(f, "step"),
            LambdaSchedule::Static(v) => write!(f, "static:{v}"),
            LambdaSchedule::DiffusionOnly => write!(f, "diffusion-only"),
        }
    }
}

/// The dynamic joint loss for a student UNet with the teacher's block structure.
pub struct JointObjective {
    /// The frozen teacher, on the plain device (`valid()`).
    pub teacher: Unet,
    pub schedule: LambdaSchedule,
    /// `S`: steps over which lambda rises.
    pub ramp: u64,
    /// The diffusion term: `L_simple`, or `L_hybrid` for a student that learns its variance
    /// (as its teacher does).
    pub loss: LossKind,
}

impl Objective<Unet> for JointObjective {
    fn loss(&self, model: &Unet, b: StepBatch<'_>) -> Tensor<1> {
        let StepBatch {
            x0,
            x_t,
            t,
            timesteps,
            eps,
            schedule,
            step,
            weights,
        } = b;
        let lambda = self.schedule.at(step, self.ramp);
        let device = x_t.device();
        let diffusion = (lambda > 0.0).then(|| match self.loss {
            LossKind::Simple => eps_loss(model.predict_eps(x_t.clone(), t.clone()), eps),
            LossKind::Hybrid => {
                let p = model.predict(x_t.clone(), t.clone());
                let v = p
                    .variance
                    .expect("check_genome: a hybrid student learns its variance");
                hybrid_loss(schedule, x0, x_t.clone(), timesteps, eps, p.eps, v, weights).0
            }
        });
        let distill = (lambda < 1.0).then(|| {
            let trace = self.teacher.trace(x_t.inner(), t.clone().inner());
            let emb = model.embed(t);
            trace
                .blocks
                .iter()
                .map(|io| {
                    let io = super::distill::to_device(io, &device);
                    let out = model.forward_block(io.id, io.input, &io.skips, emb.clone());
                    block_loss(&out, &io.outputs)
                })
                .reduce(|a, b| a + b)
                .expect("at least one block")
        });
        match (distill, diffusion) {
            (Some(d), Some(e)) => d * (1.0 - lambda) + e * lambda,
            (Some(d), None) => d,
            (None, Some(e)) => e,
            (None, None) => unreachable!("lambda is either below 1 or above 0"),
        }
    }
}

/// The student's initial weights: everything outside the blocks (timestep MLP, stem,
/// resampling convolutions, head) from the teacher; each block's units from its supernet's
/// chosen path. `student` must be built from the assembled genome.
pub fn student_from_supernets(
    mut student: Unet,
    teacher: &Unet,
    nets: &[super::supernet::BlockSupernet],
    paths: &[super::Path],
) -> Unet {
    student.time = teacher.time.clone();
    student.stem = teacher.stem.clone();
    for (s, t) in student.encoder.iter_mut().zip(&teacher.encoder) {
        s.down = t.down.clone();
    }
    for (s, t) in student.decoder.iter_mut().zip(&teacher.decoder) {
        s.up = t.up.clone();
    }
    student.head_norm = teacher.head_norm.clone();
    student.head_conv = teacher.head_conv.clone();
    for (net, path) in nets.iter().zip(paths) {
        let units = match net.id {
            crate::model::BlockId::Encoder(l) => &mut student.encoder[l].blocks,
            crate::model::BlockId::Middle => &mut student.middle,
            crate::model::BlockId::Decoder(d) => &mut student.decoder[d].blocks,
        };
        net.extract_into(path, units);
    }
    student
}
