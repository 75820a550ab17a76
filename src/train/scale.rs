//! Dynamic loss scaling for f16 training (PyTorch's `GradScaler` rule). f16's largest finite
//! value is 65,504 and its smallest normal 6.1e-5: the gradients of a diffusion loss of order
//! 0.05 would lose most of their small entries to underflow. The loss is multiplied by a scale
//! before backward and the gradients divided by it before clipping and AdamW; a step whose
//! gradients are not all finite (an f16 overflow) changes nothing but halves the scale, and
//! every `GROWTH_INTERVAL` finite steps in a row double it.
//!
//! The state lives in the run's checkpoint state, so a resumed run scales as it would have.

use serde::{Deserialize, Serialize};

pub mod defaults {
    /// The first scale (PyTorch's `init_scale`).
    pub const INIT_SCALE: f64 = 65536.0;
    /// Finite steps in a row before the scale doubles (PyTorch's `growth_interval`).
    pub const GROWTH_INTERVAL: u64 = 2000;
    /// Below this scale the gradients overflow with almost no scaling at all: the run stops
    /// with an error instead of skipping every step.
    pub const MIN_SCALE: f64 = 1.0 / 65536.0;
}

/// The loss scale of an f16 run and what it has done.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossScale {
    /// The factor the loss is multiplied by before backward.
    pub scale: f64,
    /// Finite steps since the scale last changed.
    pub clean_steps: u64,
    /// Steps skipped because a gradient overflowed, over the whole run.
    pub skipped_steps: u64,
}

impl Default for LossScale {
    fn default() -> Self {
        LossScale {
            scale: defaults::INIT_SCALE,
            clean_steps: 0,
            skipped_steps: 0,
        }
    }
}

/// What a step did under loss scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScaledStep {
    /// The gradients were finite: the step was taken (the scale may have doubled after it).
    Taken,
    /// A gradient overflowed at `scale`: the step was skipped and the scale halved.
    Skipped { scale: f64 },
}

impl LossScale {
    /// Record a step whose scaled gradients were finite or not, and move the scale.
    pub fn update(&mut self, finite: bool) -> ScaledStep {
        if finite {
            self.clean_steps += 1;
            if self.clean_steps >= defaults::GROWTH_INTERVAL {
                self.scale *= 2.0;
                self.clean_steps = 0;
            }
            ScaledStep::Taken
        } else {
            let scale = self.scale;
            self.scale *= 0.5;
            self.clean_steps = 0;
            self.skipped_steps += 1;
            ScaledStep::Skipped { scale }
        }
    }

    /// Whether the scale fell so low that scaling no longer helps.
    pub fn collapsed(&self) -> bool {
        self.scale < defaults::MIN_SCALE
    }
}
