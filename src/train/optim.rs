//! AdamW with Burn's arithmetic and Burn's state (so checkpoints of either load in the other),
//! running as one fused pass per parameter on the CPU ([`crate::cpu::optim`]) and as one kernel
//! per parameter on GPU devices ([`super::gpu_optim`]); Burn's `AdamW` for anything else.
//!
//! [`with_grad_scale`] hands the step a gradient multiplier (global-norm clipping, an f16
//! step's unscale) as a one-element device tensor: the GPU kernel applies it as it reads the
//! gradient, so clipping costs no pass over the gradients of its own and nothing waits for the
//! norm.

#[cfg(feature = "gpu-kernels")]
use super::gpu_optim;
use burn::optim::{AdamW, AdamWConfig, AdamWState, AdaptiveMomentumState, LearningRate, Optimizer};
use burn::tensor::{Device, Tensor};
use std::cell::RefCell;

thread_local! {
    static GRAD_SCALE: RefCell<Option<Tensor<1>>> = const { RefCell::new(None) };
}

/// Run `f` (an optimizer step of this thread) with every gradient a [`FusedAdamW`] step takes
/// multiplied by `coef` (`[1]`, on the gradients' device) first; `None` leaves them as they are.
pub fn with_grad_scale<R>(coef: Option<Tensor<1>>, f: impl FnOnce() -> R) -> R {
    struct Reset(Option<Tensor<1>>);
    impl Drop for Reset {
        fn drop(&mut self) {
            GRAD_SCALE.with(|c| *c.borrow_mut() = self.0.take());
        }
    }
    let previous = GRAD_SCALE.with(|c| c.replace(coef));
    let _reset = Reset(previous);
    f()
}

fn grad_scale() -> Option<Tensor<1>> {
    GRAD_SCALE.with(|c| c.borrow().clone())
}

/// AdamW (Loshchilov & Hutter 2019), without AMSGrad or cautious weight decay.
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// The same optimizer as Burn's, for tensors the CPU kernel does not take.
    burn: AdamW,
}

impl FusedAdamW {
    pub fn new(beta_1: f32, beta_2: f32, epsilon: f32, weight_decay: f32) -> FusedAdamW {
        FusedAdamW {
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            burn: AdamWConfig::new()
                .with_beta_1(beta_1)
                .with_beta_2(beta_2)
                .with_epsilon(epsilon)
                .with_weight_decay(weight_decay)
                .build(),
        }
    }
}

impl Optimizer for FusedAdamW {
    type State<const D: usize> = AdamWState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let amsgrad = state
            .as_ref()
            .is_some_and(|s| s.momentum.max_moment_2.is_some());
        let coef = grad_scale();
        #[cfg(feature = "gpu-kernels")]
        let gpu = gpu_optim::supported(&tensor) && gpu_optim::supported(&grad);
        #[cfg(not(feature = "gpu-kernels"))]
        let gpu = false;
        let cpu = crate::cpu::supported(&tensor) && crate::cpu::supported(&grad);
        if amsgrad || !(gpu || cpu) {
            let grad = match coef {
                Some(c) => grad * c.reshape([1usize; D]),
                None => grad,
            };
            return self.burn.step(lr, tensor, grad, state);
        }
        let (time, m, v) = match state {
            Some(s) => (
                s.momentum.time + 1,
                s.momentum.moment_1,
                s.momentum.moment_2,
            ),
            // The first step does not read the moments.
            None => (1, grad.clone(), grad.clone()),
        };
        let step = crate::cpu::optim::AdamWStep {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            time,
        };
        #[cfg(feature = "gpu-kernels")]
        if gpu {
            let c = gpu_optim::AdamWConsts::new(&step);
            let (p, moment_1, moment_2) = gpu_optim::adamw(tensor, grad, m, v, coef, c);
            return (p, Some(adamw_state(time, moment_1, moment_2)));
        }
        let grad = match coef {
            Some(c) => crate::cpu::scale(grad, c),
            None => grad,
        };
        let (p, moment_1, moment_2) = crate::cpu::adamw(tensor, grad, m, v, step);
        (p, Some(adamw_state(time, moment_1, moment_2)))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        <AdamW as Optimizer>::to_device(state, device)
    }
}

fn adamw_state<const D: usize>(time: usize, m: Tensor<D>, v: Tensor<D>) -> AdamWState<D> {
    AdamWState {
        momentum: AdaptiveMomentumState {
            time,
            moment_1: m,
            moment_2: v,
            max_moment_2: None,
        },
    }
}
