//! Global gradient-norm clipping (as `torch.nn.utils.clip_grad_norm_`): every gradient is
//! scaled by `min(1, max_norm / (||g||_2 + 1e-6))` where the norm runs over all parameters.
//! Burn's own `GradientClipping::Norm` clips each tensor separately. Everything stays on the
//! device: the norm is returned as a tensor and read only when the caller logs, and the scaling
//! happens inside the optimizer's read of each gradient ([`super::with_grad_scale`]).

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::Tensor;

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

/// Global L2 norm of all gradients of `module` (a `[1]` tensor), or None without gradients.
pub fn grad_norm<M: Module>(module: &M, grads: &GradientsParams) -> Option<Tensor<1>> {
    let mut v = SquaredNorm { grads, acc: None };
    module.visit(&mut v);
    v.acc.map(|s| s.sqrt())
}

/// The factor that clips gradients of global norm `norm` to `max_norm`:
/// `min(1, max_norm / (norm + 1e-6))`, on the device (`[1]`). The optimizer applies it as it
/// reads each gradient ([`super::with_grad_scale`]).
pub fn clip_coefficient(norm: &Tensor<1>, max_norm: f64) -> Tensor<1> {
    (norm.clone().add_scalar(1e-6).recip() * max_norm).clamp_max(1.0)
}
