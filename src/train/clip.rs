//! Global gradient-norm clipping (as `torch.nn.utils.clip_grad_norm_`): every gradient is
//! scaled by `min(1, max_norm / (||g||_2 + 1e-6))` where the norm runs over all parameters.
//! Burn's own `GradientClipping::Norm` clips each tensor separately. Everything stays on the
//! device: the norm is returned as a tensor and read only when the caller logs.

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};

struct SquaredNorm<'a> {
    grads: &'a GradientsParams,
    acc: Option<Tensor<1>>,
}

impl ModuleVisitor for SquaredNorm<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.get::<D>(param.id) {
            let s = if crate::cpu::supported(&g) {
                crate::cpu::sum_squares(g)
            } else {
                g.square().sum()
            };
            self.acc = Some(match self.acc.take() {
                Some(a) => a + s,
                None => s,
            });
        }
    }
}

struct Scale<'a> {
    grads: &'a mut GradientsParams,
    coef: Tensor<1>,
}

impl ModuleVisitor for Scale<'_> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        if let Some(g) = self.grads.remove::<D>(param.id) {
            let scaled = if crate::cpu::supported(&g) {
                crate::cpu::scale(g, self.coef.clone())
            } else {
                g * self.coef.clone().reshape([1usize; D])
            };
            self.grads.register::<D>(param.id, scaled);
        }
    }
}

/// Global L2 norm of all gradients of `module` (a `[1]` tensor), or None without gradients.
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut v = SquaredNorm { grads, acc: None };
    module.visit(&mut v);
    v.acc.map(|s| s.sqrt())
}

/// Multiply every gradient of `module` by `coef` in place (an f16 step's unscale and clip in
/// one pass); `device` is the gradients' (the training device without autodiff).
pub fn scale_grads<M: Module>(module: &M, grads: &mut GradientsParams, coef: f64, device: &Device) {
    let coef = Tensor::<1>::from_data(TensorData::new(vec![coef as f32], [1]), device);
    module.visit(&mut Scale { grads, coef });
}

/// Clip to `max_norm` in place; returns the norm before clipping.
pub fn clip_global_norm<M: Module>(
    module: &M,
    grads: &mut GradientsParams,
    max_norm: f64,
) -> Option<Tensor<1>> {
    let norm = grad_norm(module, grads)?;
    let coef = (norm.clone().add_scalar(1e-6).recip() * max_norm).clamp_max(1.0);
    module.visit(&mut Scale { grads, coef });
    Some(norm)
}
