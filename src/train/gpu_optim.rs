//! The training step's per-parameter passes on GPU devices, one kernel each: the GPU counterpart
//! of [`crate::cpu::optim`], with the same arithmetic (Burn's `AdamW`, op for op, in f32).
//!
//! Why: Burn's `AdamW` is about fifteen tensor ops per parameter and the clip's scaling one more;
//! on the GPU backends fusion merges them into a few kernels, but every op still costs the host
//! its bookkeeping and every kernel a launch, per parameter and per step, whatever the
//! parameter's size. A UNet has hundreds of parameter tensors, so that fixed cost grows with the
//! network's depth, not its work. Here one kernel per parameter reads the gradient, multiplies it
//! by the clip coefficient (a one-element device tensor, so nothing waits for the norm), and
//! writes the weight and both moments.
//!
//! Written in CubeCL's Rust dialect (WGSL on wgpu and WebGPU, SPIR-V on `vulkan`, CUDA on
//! `cuda`), as a Burn backend extension for the CubeCL backend and its fusion wrapper (autodiff
//! passes through: optimizer tensors carry no graph). The reference is the CPU kernel, itself
//! tested bit for bit against Burn's `AdamW`; the parity test is
//! `tests/wgpu_parity.rs::adamw_kernel_matches_burn_adamw`.

use burn::backend::autodiff::{Autodiff, checkpoint::strategy::CheckpointStrategy};
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::{
    AutodiffBackend, Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::{DType, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::CubeDim;
use kernel::{AdamWArgsLaunch, adamw_kernel};

/// One AdamW step's constants, as the kernel takes them (see [`crate::cpu::optim::adamw`]).
#[derive(Clone, Copy, Debug)]
pub struct AdamWConsts {
    pub lr: f32,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    /// `1 - lr * weight_decay`, or exactly 1 without weight decay.
    pub keep: f32,
    /// `1 - beta_1^t` and `1 - beta_2^t`, the bias corrections of step `t`.
    pub correction_1: f32,
    pub correction_2: f32,
    /// Step 1: the moments start from zero and are not read.
    pub first: bool,
    /// Whether the gradient is multiplied by `coef[0]` (else `coef` is not read).
    pub scaled: bool,
}

impl AdamWConsts {
    /// The constants of step `s.time`, computed as the CPU kernel computes them.
    pub fn new(s: &crate::cpu::optim::AdamWStep) -> AdamWConsts {
        let t = s.time as i32;
        let decay_rate = s.lr * s.weight_decay as f64;
        AdamWConsts {
            lr: s.lr as f32,
            beta_1: s.beta_1,
            beta_2: s.beta_2,
            epsilon: s.epsilon,
            keep: if decay_rate != 0.0 {
                (1.0 - decay_rate) as f32
            } else {
                1.0
            },
            correction_1: 1f32 - s.beta_1.powi(t),
            correction_2: 1f32 - s.beta_2.powi(t),
            first: s.time == 1,
            scaled: false,
        }
    }
}

/// The AdamW step as a Burn backend extension.
#[backend_extension(Autodiff, Cube, Fusion)]
pub trait GpuAdamW: Backend {
    /// `(p, m, v)` after one step with gradient `g * coef[0]` (`coef` has one element; with
    /// `c.scaled` false it is not read). With `c.first` the `m` and `v` given are not read (any
    /// tensor of `p`'s size will do).
    #[fusion(meta = adamw_meta)]
    fn gpu_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        coef: FloatTensor<Self>,
        c: AdamWConsts,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

fn adamw_meta(
    p: &TensorSpec,
    _g: &TensorSpec,
    _m: &TensorSpec,
    _v: &TensorSpec,
    _coef: &TensorSpec,
    _c: &AdamWConsts,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    (p.clone(), p.clone(), p.clone())
}

/// Whether [`adamw`] takes this tensor: f32 on a CubeCL device (wgpu, Vulkan, CUDA; `flex`
/// reports no device identity).
pub fn supported<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && x.device().identity().is_some()
}

/// One AdamW step of a parameter on a CubeCL device ([`supported`]): the new `(p, m, v)`, with
/// the gradient multiplied by `coef` (`[1]`, on the same device) on the way in, when given.
pub fn adamw<const D: usize>(
    p: Tensor<D>,
    g: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
    coef: Option<Tensor<1>>,
    c: AdamWConsts,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (ps, gs, ms, vs) = (p.dims(), g.dims(), m.dims(), v.dims());
    assert!(
        gs == ps && ms == ps && vs == ps,
        "adamw: the parameter is {ps:?}, the gradient {gs:?}, the moments {ms:?} and {vs:?}"
    );
    let c = AdamWConsts {
        scaled: coef.is_some(),
        ..c
    };
    // Unscaled, the kernel reads no coefficient: any buffer fills its binding.
    let coef = coef.unwrap_or_else(|| g.clone().reshape([-1]));
    let (p, m, v) = Dispatch::gpu_adamw(
        p.into_dispatch(),
        g.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        coef.into_dispatch(),
        c,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

impl<B: GpuAdamW, C: CheckpointStrategy> GpuAdamW for Autodiff<B, C> {
    // Optimizer tensors carry no graph: the update is a value, not differentiated.
    fn gpu_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        coef: FloatTensor<Self>,
        c: AdamWConsts,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (p, m, v) = B::gpu_adamw(
            p.into_primitive(),
            g.into_primitive(),
            m.into_primitive(),
            v.into_primitive(),
            coef.into_primitive(),
            c,
        );
        (
            Self::from_inner(p),
            Self::from_inner(m),
            Self::from_inner(v),
        )
    }
}

impl GpuAdamW for CubeBackend {
    fn gpu_adamw(
        p: CubeTensor,
        g: CubeTensor,
        m: CubeTensor,
        v: CubeTensor,
        coef: CubeTensor,
        c: AdamWConsts,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let (p, g, m, v) = (
            into_contiguous(p),
            into_contiguous(g),
            into_contiguous(m),
            into_contiguous(v),
        );
        let (client, device, dtype) = (p.client.clone(), p.device.clone(), p.dtype);
        let empty = || {
            burn_cubecl::ops::numeric::empty_device_dtype(
                client.clone(),
                device.clone(),
                p.shape(),
                dtype,
            )
        };
        let (p_out, m_out, v_out) = (empty(), empty(), empty());
        let len = p.shape().num_elements();
        if len > 0 {
            let cube_dim = CubeDim::new(&client, len);
            let cube_count = calculate_cube_count_elemwise(&client, len, cube_dim);
            adamw_kernel::launch(
                &client,
                cube_count,
                cube_dim,
                p.into_tensor_arg(),
                g.into_tensor_arg(),
                m.into_tensor_arg(),
                v.into_tensor_arg(),
                coef.into_tensor_arg(),
                p_out.clone().into_tensor_arg(),
                m_out.clone().into_tensor_arg(),
                v_out.clone().into_tensor_arg(),
                AdamWArgsLaunch::new(
                    len,
                    c.lr,
                    c.beta_1,
                    c.beta_2,
                    c.epsilon,
                    c.keep,
                    c.correction_1,
                    c.correction_2,
                ),
                c.first,
                c.scaled,
                burn::backend::cubecl::dtype_to_storage_type(dtype),
            );
        }
        (p_out, m_out, v_out)
    }
}

/// The kernel, apart from Burn's `Tensor` (CubeCL's prelude has its own).
mod kernel {
    use cubecl::prelude::*;

    #[derive(CubeLaunch, CubeType)]
    pub(super) struct AdamWArgs {
        len: usize,
        lr: f32,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        keep: f32,
        correction_1: f32,
        correction_2: f32,
    }

    /// One thread per element, the CPU kernel's loop body (`crate::cpu::optim::adamw`) with
    /// the gradient scaled by `coef[0]` first.
    #[cube(launch)]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn adamw_kernel<F: Float>(
        p: &Tensor<F>,
        g: &Tensor<F>,
        m: &Tensor<F>,
        v: &Tensor<F>,
        coef: &Tensor<F>,
        p_out: &mut Tensor<F>,
        m_out: &mut Tensor<F>,
        v_out: &mut Tensor<F>,
        args: &AdamWArgs,
        #[comptime] first: bool,
        #[comptime] scaled: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let i = ABSOLUTE_POS;
        if i >= args.len {
            terminate!();
        }
        let b1 = F::cast_from(args.beta_1);
        let b2 = F::cast_from(args.beta_2);
        let f1 = F::new(1.0) - b1;
        let f2 = F::new(1.0) - b2;
        let mut gi = g[i];
        if scaled {
            gi *= coef[0];
        }
        let mut mi = gi * f1;
        let mut vi = gi * gi * f2;
        if !first {
            mi = m[i] * b1 + mi;
            vi = v[i] * b2 + vi;
        }
        m_out[i] = mi;
        v_out[i] = vi;
        let delta = (mi / F::cast_from(args.correction_1))
            / (F::sqrt(vi / F::cast_from(args.correction_2)) + F::cast_from(args.epsilon));
        p_out[i] = p[i] * F::cast_from(args.keep) - delta * F::cast_from(args.lr);
    }
}
