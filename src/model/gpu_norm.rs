//! GroupNorm with a per-image affine and an optional SiLU on GPU devices, forward and backward as
//! one kernel each: the GPU counterpart of [`crate::cpu::norm`], with the same contract
//! (`act(n * scale[b, c] + shift[b, c])`, `n = (x - mean_g) * rstd_g` over the group of channel
//! `c`, biased variance; `scale` and `shift` `[B, C]`).
//!
//! Why: Burn's `GroupNorm` + SiLU (+ IDDPM's scale and shift) is a reshape, a mean, a variance
//! (itself a mean of a square), a normalisation and the affine forward, and their autodiff nodes
//! backward: on the GPU backends fusion merges the element-wise parts, but the two reductions
//! forward and the four backward each read the activation once more and launch a reduce kernel
//! of their own. Here one cube per (image, group) reads its group three times forward (mean,
//! variance, output; the group is in cache after the first) and three times backward, keeping
//! the group's mean and reciprocal standard deviation from the forward.
//!
//! Written in CubeCL's Rust dialect (WGSL on wgpu and WebGPU, SPIR-V on `vulkan`, CUDA on
//! `cuda`), as a Burn backend extension for the CubeCL backend, its fusion wrapper and
//! autodiff. The reference is Burn's `GroupNorm` and tensor ops ([`super::norm::NormAlgorithm::Burn`]);
//! the parity test is `tests/wgpu_parity.rs::group_norm_kernel_matches_burn_ops`.

use burn::backend::autodiff::{
    Autodiff, NodeId,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::fusion::custom::TensorSpec;
use burn::backend::{
    AutodiffBackend, Backend, Dispatch, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::{DType, Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::{CubeCount, CubeDim};
use kernel::{NormArgsLaunch, group_norm_backward_kernel, group_norm_forward_kernel};

/// The fused group norm as a Burn backend extension.
#[backend_extension(Autodiff, Cube, Fusion)]
pub trait GpuGroupNorm: Backend {
    /// `(y, stats)`: the output `[B, C, H, W]` and each group's (mean, 1 / std) `[B, G, 2]`.
    #[fusion(meta = forward_meta)]
    fn gpu_group_norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>);

    /// `(dx, dscale, dshift)` of [`GpuGroupNorm::gpu_group_norm`] given the output's gradient
    /// `dy` and the forward's `stats`.
    #[fusion(meta = backward_meta)]
    #[allow(clippy::too_many_arguments)]
    fn gpu_group_norm_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        groups: usize,
        silu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);
}

fn forward_meta(
    x: &TensorSpec,
    _scale: &TensorSpec,
    _shift: &TensorSpec,
    groups: &usize,
    _epsilon: &f64,
    _silu: &bool,
) -> (TensorSpec, TensorSpec) {
    (
        x.clone(),
        TensorSpec::new(Shape::new([x.shape[0], *groups, 2]), x.dtype),
    )
}

#[allow(clippy::too_many_arguments)]
fn backward_meta(
    x: &TensorSpec,
    scale: &TensorSpec,
    shift: &TensorSpec,
    _stats: &TensorSpec,
    _dy: &TensorSpec,
    _groups: &usize,
    _silu: &bool,
) -> (TensorSpec, TensorSpec, TensorSpec) {
    let bc = Shape::new([x.shape[0], x.shape[1]]);
    (
        x.clone(),
        TensorSpec::new(bc.clone(), scale.dtype),
        TensorSpec::new(bc, shift.dtype),
    )
}

/// Whether [`group_norm`] takes this tensor: an f32 tensor on a CubeCL device (wgpu, Vulkan,
/// CUDA; `flex` reports no device identity).
pub fn supported(x: &Tensor<4>) -> bool {
    x.dtype() == DType::F32 && x.device().identity().is_some()
}

/// `act(n * scale + shift)` (see the module docs) on a CubeCL device ([`supported`]).
pub fn group_norm(
    x: Tensor<4>,
    scale: Tensor<2>,
    shift: Tensor<2>,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> Tensor<4> {
    let [_, c, _, _] = x.dims();
    assert!(
        groups > 0 && c % groups == 0,
        "group norm: {c} channels do not split into {groups} groups"
    );
    let (y, _) = Dispatch::gpu_group_norm(
        x.into_dispatch(),
        scale.into_dispatch(),
        shift.into_dispatch(),
        groups,
        epsilon,
        silu,
    );
    Tensor::<4>::from_dispatch(y)
}

impl<B: GpuGroupNorm, C: CheckpointStrategy> GpuGroupNorm for Autodiff<B, C> {
    fn gpu_group_norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        /// Parents: input, scale, shift.
        #[derive(Debug)]
        struct NormBackward;

        impl<B: GpuGroupNorm> Backward<B, 3> for NormBackward {
            type State = (NodeId, NodeId, NodeId, B::FloatTensorPrimitive, usize, bool);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_scale, node_shift] = ops.parents;
                let dy = grads.consume::<B>(&ops.node);
                let (x_state, scale_state, shift_state, stats, groups, silu) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                let scale =
                    checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(scale_state);
                let shift =
                    checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(shift_state);
                let (dx, dscale, dshift) =
                    B::gpu_group_norm_backward(x, scale, shift, stats, dy, groups, silu);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_scale {
                    grads.register::<B>(node.id, dscale);
                }
                if let Some(node) = node_shift {
                    grads.register::<B>(node.id, dshift);
                }
            }
        }

        let guards = [x.node(), scale.node(), shift.node()];
        match NormBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let scale_state = prep.checkpoint(&scale);
                let shift_state = prep.checkpoint(&shift);
                let (y, stats) = B::gpu_group_norm(
                    x.into_primitive(),
                    scale.into_primitive(),
                    shift.into_primitive(),
                    groups,
                    epsilon,
                    silu,
                );
                let state = (
                    x_state,
                    scale_state,
                    shift_state,
                    stats.clone(),
                    groups,
                    silu,
                );
                (prep.finish(state, y), Self::from_inner(stats))
            }
            OpsKind::UnTracked(prep) => {
                let (y, stats) = B::gpu_group_norm(
                    x.into_primitive(),
                    scale.into_primitive(),
                    shift.into_primitive(),
                    groups,
                    epsilon,
                    silu,
                );
                (prep.finish(y), Self::from_inner(stats))
            }
        }
    }

    // The gradients are values, not differentiated again (no second-order autodiff).
    fn gpu_group_norm_backward(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        stats: FloatTensor<Self>,
        dy: FloatTensor<Self>,
        groups: usize,
        silu: bool,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (dx, dscale, dshift) = B::gpu_group_norm_backward(
            x.into_primitive(),
            scale.into_primitive(),
            shift.into_primitive(),
            stats.into_primitive(),
            dy.into_primitive(),
            groups,
            silu,
        );
        (
            Self::from_inner(dx),
            Self::from_inner(dscale),
            Self::from_inner(dshift),
        )
    }
}

/// Threads per cube: a power of two (the tree reductions halve it), at most what the device
/// allows in one cube.
fn units(x: &CubeTensor) -> usize {
    let max = x.client.properties().hardware.max_units_per_cube.max(1);
    let cap = 256.min(max) as usize;
    if cap.is_power_of_two() {
        cap
    } else {
        cap.next_power_of_two() >> 1
    }
}

/// One cube per (image, group), laid out over two dimensions (a cube count may be capped at
/// 65535 per dimension).
fn cube_count(groups_total: usize) -> CubeCount {
    let x = groups_total.clamp(1, 32768);
    CubeCount::new_2d(x as u32, groups_total.div_ceil(x).max(1) as u32)
}

fn args(
    x: &CubeTensor,
    scale: &CubeTensor,
    shift: &CubeTensor,
    groups: usize,
    epsilon: f64,
) -> NormArgsLaunch {
    let [b, c, h, w] = x.shape().dims();
    let (ss, ts) = (scale.meta.strides(), shift.meta.strides());
    NormArgsLaunch::new(
        b * groups,
        c,
        c / groups,
        h * w,
        ss[0],
        ss[1],
        ts[0],
        ts[1],
        epsilon as f32,
    )
}

impl GpuGroupNorm for CubeBackend {
    fn gpu_group_norm(
        x: CubeTensor,
        scale: CubeTensor,
        shift: CubeTensor,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> (CubeTensor, CubeTensor) {
        let x = into_contiguous(x);
        let [b, _, _, _] = x.shape().dims();
        let (client, device, dtype) = (x.client.clone(), x.device.clone(), x.dtype);
        let empty = |shape: Shape| {
            burn_cubecl::ops::numeric::empty_device_dtype(
                client.clone(),
                device.clone(),
                shape,
                dtype,
            )
        };
        let y = empty(x.shape());
        let stats = empty(Shape::new([b, groups, 2]));
        if x.shape().num_elements() > 0 {
            let units = units(&x);
            group_norm_forward_kernel::launch(
                &client,
                cube_count(b * groups),
                CubeDim::new_1d(units as u32),
                x.clone().into_tensor_arg(),
                scale.clone().into_tensor_arg(),
                shift.clone().into_tensor_arg(),
                y.clone().into_tensor_arg(),
                stats.clone().into_tensor_arg(),
                args(&x, &scale, &shift, groups, epsilon),
                units,
                silu,
                burn::backend::cubecl::dtype_to_storage_type(dtype),
            );
        }
        (y, stats)
    }

    fn gpu_group_norm_backward(
        x: CubeTensor,
        scale: CubeTensor,
        shift: CubeTensor,
        stats: CubeTensor,
        dy: CubeTensor,
        groups: usize,
        silu: bool,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let (x, dy, stats) = (
            into_contiguous(x),
            into_contiguous(dy),
            into_contiguous(stats),
        );
        let [b, c, _, _] = x.shape().dims();
        let (client, device, dtype) = (x.client.clone(), x.device.clone(), x.dtype);
        let empty = |shape: Shape| {
            burn_cubecl::ops::numeric::empty_device_dtype(
                client.clone(),
                device.clone(),
                shape,
                dtype,
            )
        };
        let dx = empty(x.shape());
        let dscale = empty(Shape::new([b, c]));
        let dshift = empty(Shape::new([b, c]));
        if x.shape().num_elements() > 0 {
            let units = units(&x);
            group_norm_backward_kernel::launch(
                &client,
                cube_count(b * groups),
                CubeDim::new_1d(units as u32),
                x.clone().into_tensor_arg(),
                dy.into_tensor_arg(),
                scale.clone().into_tensor_arg(),
                shift.clone().into_tensor_arg(),
                stats.into_tensor_arg(),
                dx.clone().into_tensor_arg(),
                dscale.clone().into_tensor_arg(),
                dshift.clone().into_tensor_arg(),
                args(&x, &scale, &shift, groups, 0.0),
                units,
                silu,
                burn::backend::cubecl::dtype_to_storage_type(dtype),
            );
        }
        (dx, dscale, dshift)
    }
}

/// The kernels, apart from Burn's `Tensor` (CubeCL's prelude has its own).
mod kernel {
    use cubecl::prelude::*;

    #[derive(CubeLaunch, CubeType)]
    pub(super) struct NormArgs {
        /// `B * G`, the number of cubes that have work.
        groups_total: usize,
        channels: usize,
        group_channels: usize,
        /// `H * W`.
        pixels: usize,
        scale_stride_b: usize,
        scale_stride_c: usize,
        shift_stride_b: usize,
        shift_stride_c: usize,
        epsilon: f32,
    }

    /// The sum of `acc[0..CUBE_DIM]` (a power of two), left in every thread. Starts and ends with
    /// a barrier, so `acc` may be rewritten right after.
    #[cube]
    fn cube_sum<F: Float>(acc: &mut Shared<[F]>) -> F {
        sync_cube();
        // A runtime counter (`CUBE_DIM` is the launch's `units`): a count derived from a
        // comptime value would be a constant the loop cannot step.
        let mut half = CUBE_DIM as usize / 2;
        while half > 0 {
            let i = UNIT_POS as usize;
            if i < half {
                let other = acc[i + half];
                acc[i] += other;
            }
            sync_cube();
            half /= 2;
        }
        let total = acc[0];
        sync_cube();
        total
    }

    /// `z * sigmoid(z)` or `z`.
    #[cube]
    fn act<F: Float>(z: F, #[comptime] silu: bool) -> F {
        if silu {
            z / (F::new(1.0) + F::exp(-z))
        } else {
            z
        }
    }

    /// The derivative of [`act`] at `z`.
    #[cube]
    fn act_grad<F: Float>(z: F, #[comptime] silu: bool) -> F {
        if silu {
            let s = F::new(1.0) / (F::new(1.0) + F::exp(-z));
            s * (F::new(1.0) + z * (F::new(1.0) - s))
        } else {
            F::new(1.0)
        }
    }

    /// One cube per (image `b`, group `g`), over the group's contiguous `cg * HW` elements:
    /// mean, then the variance around it, then the output; thread 0 writes the statistics.
    #[allow(clippy::too_many_arguments)]
    #[cube(launch)]
    pub(super) fn group_norm_forward_kernel<F: Float>(
        x: &Tensor<F>,
        scale: &Tensor<F>,
        shift: &Tensor<F>,
        y: &mut Tensor<F>,
        stats: &mut Tensor<F>,
        args: &NormArgs,
        #[comptime] units: usize,
        #[comptime] silu: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let bg = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
        if bg >= args.groups_total {
            terminate!();
        }
        let groups = args.channels / args.group_channels;
        let b = bg / groups;
        let first_channel = bg % groups * args.group_channels;
        let n = args.group_channels * args.pixels;
        let base = bg * n;
        let tid = UNIT_POS as usize;
        let mut acc = Shared::<[F]>::new_slice(units);

        let mut s = F::new(0.0);
        let mut i = tid;
        while i < n {
            s += x[base + i];
            i += units;
        }
        acc[tid] = s;
        let mean = cube_sum::<F>(&mut acc) / F::cast_from(n);

        let mut s = F::new(0.0);
        let mut i = tid;
        while i < n {
            let d = x[base + i] - mean;
            s += d * d;
            i += units;
        }
        acc[tid] = s;
        let var = cube_sum::<F>(&mut acc) / F::cast_from(n);
        let rstd = F::new(1.0) / F::sqrt(var + F::cast_from(args.epsilon));
        if tid == 0 {
            stats[bg * 2] = mean;
            stats[bg * 2 + 1] = rstd;
        }

        let mut i = tid;
        while i < n {
            let c = first_channel + i / args.pixels;
            let a = rstd * scale[b * args.scale_stride_b + c * args.scale_stride_c];
            let t = shift[b * args.shift_stride_b + c * args.shift_stride_c] - mean * a;
            y[base + i] = act::<F>(x[base + i] * a + t, silu);
            i += units;
        }
    }

    /// One cube per (image, group). Per channel `c` of the group: `dz = dy * act'(z)`,
    /// `dshift[b, c] = sum(dz)`, `dscale[b, c] = sum(dz * n)`; then
    /// `dx = rstd * (dn - mean(dn) - n * mean(dn * n))` with `dn = dz * scale`, as
    /// `dz * rstd * scale + x * beta + gamma` (`z` recomputed from `x` both times).
    #[allow(clippy::too_many_arguments)]
    #[cube(launch)]
    pub(super) fn group_norm_backward_kernel<F: Float>(
        x: &Tensor<F>,
        dy: &Tensor<F>,
        scale: &Tensor<F>,
        shift: &Tensor<F>,
        stats: &Tensor<F>,
        dx: &mut Tensor<F>,
        dscale: &mut Tensor<F>,
        dshift: &mut Tensor<F>,
        args: &NormArgs,
        #[comptime] units: usize,
        #[comptime] silu: bool,
        #[define(F)] _dtype: ElemType,
    ) {
        let bg = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
        if bg >= args.groups_total {
            terminate!();
        }
        let groups = args.channels / args.group_channels;
        let b = bg / groups;
        let first_channel = bg % groups * args.group_channels;
        let hw = args.pixels;
        let n = args.group_channels * hw;
        let base = bg * n;
        let tid = UNIT_POS as usize;
        let mean = stats[bg * 2];
        let rstd = stats[bg * 2 + 1];
        let mut acc = Shared::<[F]>::new_slice(units);
        let mut acc2 = Shared::<[F]>::new_slice(units);

        // Pass 1, channel by channel: the per-channel sums and their scale-weighted totals.
        let mut s1 = F::new(0.0);
        let mut s2 = F::new(0.0);
        for cl in 0..args.group_channels {
            let c = first_channel + cl;
            let sc = scale[b * args.scale_stride_b + c * args.scale_stride_c];
            let a = rstd * sc;
            let t = shift[b * args.shift_stride_b + c * args.shift_stride_c] - mean * a;
            let start = base + cl * hw;
            let mut dz_sum = F::new(0.0);
            let mut dzx_sum = F::new(0.0);
            let mut i = tid;
            while i < hw {
                let v = x[start + i];
                let dz = dy[start + i] * act_grad::<F>(v * a + t, silu);
                dz_sum += dz;
                dzx_sum += dz * (v - mean);
                i += units;
            }
            acc[tid] = dz_sum;
            acc2[tid] = dzx_sum;
            let dz_total = cube_sum::<F>(&mut acc);
            let dzn_total = cube_sum::<F>(&mut acc2) * rstd;
            if tid == 0 {
                dshift[b * args.channels + c] = dz_total;
                dscale[b * args.channels + c] = dzn_total;
            }
            s1 += dz_total * sc;
            s2 += dzn_total * sc;
        }

        // Pass 2: the input gradient.
        let inv_n = F::new(1.0) / F::cast_from(n);
        let m1 = s1 * inv_n;
        let m2 = s2 * inv_n;
        let beta = -rstd * rstd * m2;
        let gamma = rstd * (mean * rstd * m2 - m1);
        let mut i = tid;
        while i < n {
            let c = first_channel + i / hw;
            let sc = scale[b * args.scale_stride_b + c * args.scale_stride_c];
            let a = rstd * sc;
            let t = shift[b * args.shift_stride_b + c * args.shift_stride_c] - mean * a;
            let v = x[base + i];
            let dz = dy[base + i] * act_grad::<F>(v * a + t, silu);
            dx[base + i] = dz * a + v * beta + gamma;
            i += units;
        }
    }
}
