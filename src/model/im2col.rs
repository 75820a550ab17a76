//! The convolution the UNet trains and samples with on GPU devices: an im2col kernel of ours
//! feeding Burn's tuned matmul forward, and Burn's own data and weight gradients (already
//! im2col + matmul on the CubeCL backends) backward.
//!
//! Why it exists: on wgpu with f32 there are no tensor cores, so Burn's `conv2d` forward can only
//! autotune between its direct kernel and implicit GEMMs that all decline; a kernel profile of
//! `ddpm-cifar10` at batch 128 on an H100 put that direct kernel at 73% of all device time. The
//! backward passes were not the problem (they have im2col candidates). Expressing the forward as
//! tensor ops (slices + concatenation + matmul, [`super::conv::conv2d_gemm`]) made sampling 4.4x
//! faster but training slower, because autodiff then differentiates the slices. This op keeps
//! the forward's columns out of the graph: it is one node whose backward is Burn's
//! `conv2d_x_backward` / `conv2d_weight_backward`, exactly what Burn's `conv2d` node runs.
//!
//! The kernel is written in CubeCL's Rust dialect rather than as a raw WGSL template: the same
//! source then compiles to WGSL on the wgpu path (and WebGPU), to SPIR-V on the `vulkan` build
//! and to CUDA on the `cuda` build, where a WGSL template would fail to launch. The plain
//! tensor-op version it replaces is [`super::conv::conv2d_gemm`] and Burn's `conv2d`; the parity
//! tests compare all three (`tests/model.rs`, `tests/wgpu_parity.rs`).
//!
//! Only present with a GPU backend feature (`wgpu`, `cuda`): the op is a Burn backend extension
//! with implementations for the CubeCL backend, its fusion wrapper, autodiff and `flex` (where it
//! is Burn's `conv2d`, so the autodiff plumbing is testable on the CPU).

use burn::backend::autodiff::{
    Autodiff,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::ops::{
    ConvOptions, FloatTensorOps, ModuleOps, conv::calculate_conv_output_sizes,
};
use burn::backend::{
    Backend, Dispatch, Flex, TensorMetadata, backend_extension, tensor::FloatTensor,
};
use burn::tensor::{Shape, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::CubeDim;
use kernel::{Im2colArgsLaunch, im2col_kernel};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Default upper bound on one batch chunk's column matrix. The columns hold every input pixel
/// once per filter tap (9x the activation for a 3x3), so a large batch is lowered in chunks:
/// 256 MiB keeps the peak modest on small GPUs while each chunk's matmul stays large (a
/// 128-channel 3x3 over 32x32 images is still a 1152 x 57344 operand).
pub const DEFAULT_COLUMN_BYTES: usize = 256 << 20;

static COLUMN_BYTES: AtomicUsize = AtomicUsize::new(DEFAULT_COLUMN_BYTES);

/// Sets the column budget of every convolution in this process (at least one image's columns
/// are always built at once, and never more than the device's largest buffer). Lower it on a
/// GPU with little memory.
pub fn set_column_budget(bytes: usize) {
    COLUMN_BYTES.store(bytes, Ordering::Relaxed);
}

/// The output shape of a 2-D convolution, `[B, Cout, OH, OW]`.
fn output_shape(x: &Shape, weight: &Shape, options: &ConvOptions<2>) -> Shape {
    let sizes = calculate_conv_output_sizes(
        &[weight[2], weight[3]],
        &options.stride,
        &options.padding,
        &options.dilation,
        &[x[2], x[3]],
    );
    Shape::new([x[0], weight[0], sizes[0], sizes[1]])
}

/// The convolution op, without bias (the caller adds it as a tensor op, which fusion merges
/// into the next element-wise kernel).
#[backend_extension(Autodiff, Flex, Cube, Fusion)]
pub trait Im2colConv: Backend {
    /// `[B, Cin, H, W]` * `[Cout, Cin / groups, KH, KW]` -> `[B, Cout, OH, OW]`.
    #[fusion(dtype = x, shape = output_shape(x, weight, options))]
    fn conv2d_im2col(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;
}

/// `conv2d(x, weight, bias, options)` through [`Im2colConv`]. `x` and `weight` must be on a
/// CubeCL device (wgpu, Vulkan, CUDA) or on `flex`.
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    let out = Tensor::<4>::from_dispatch(Dispatch::conv2d_im2col(
        x.into_dispatch(),
        weight.into_dispatch(),
        options,
    ));
    match bias {
        Some(bias) => {
            let c = bias.dims()[0];
            out + bias.reshape([1, c, 1, 1])
        }
        None => out,
    }
}

impl Im2colConv for Flex {
    fn conv2d_im2col(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        // flex's own convolution is already a GEMM.
        Self::conv2d(x, weight, None, options)
    }
}

impl<B: Im2colConv, C: CheckpointStrategy> Im2colConv for Autodiff<B, C> {
    fn conv2d_im2col(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct Im2colConvBackward;

        impl<B: Backend> Backward<B, 2> for Im2colConvBackward {
            type State = (
                burn::backend::autodiff::NodeId,
                burn::backend::autodiff::NodeId,
                ConvOptions<2>,
            );

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_weight] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, weight_state, options) = ops.state;
                let x = checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(x_state);
                let weight =
                    checkpointer.retrieve_node_output::<B::FloatTensorPrimitive>(weight_state);
                if let Some(node) = node_x {
                    let g = B::conv2d_x_backward(
                        x.clone(),
                        weight.clone(),
                        grad.clone(),
                        options.clone(),
                    );
                    grads.register::<B>(node.id, g);
                }
                if let Some(node) = node_weight {
                    let g = B::conv2d_weight_backward(x, weight, grad, options);
                    grads.register::<B>(node.id, g);
                }
            }
        }

        let guards = [x.node(), weight.node()];
        match Im2colConvBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let weight_state = prep.checkpoint(&weight);
                let out =
                    B::conv2d_im2col(x.into_primitive(), weight.into_primitive(), options.clone());
                prep.finish((x_state, weight_state, options), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::conv2d_im2col(
                x.into_primitive(),
                weight.into_primitive(),
                options,
            )),
        }
    }
}

impl Im2colConv for CubeBackend {
    fn conv2d_im2col(x: CubeTensor, weight: CubeTensor, options: ConvOptions<2>) -> CubeTensor {
        // Grouped (incl. depthwise) convolutions have their own kernels in Burn; an empty batch
        // has nothing to lower.
        if options.groups != 1 || x.shape()[0] == 0 {
            return Self::conv2d(x, weight, None, options);
        }
        let dtype = x.dtype;
        let out_shape = output_shape(&x.shape(), &weight.shape(), &options);
        let [b, cin, _, _] = x.shape().dims();
        let [cout, cin_w, kh, kw] = weight.shape().dims();
        assert_eq!(
            cin, cin_w,
            "convolution weight expects {cin_w} input channels, the input has {cin}"
        );
        let [_, _, oh, ow] = out_shape.dims();
        let (k, p) = (cin * kh * kw, oh * ow);
        // [Cout, Cin, KH, KW] -> [Cout, Cin*KH*KW]: the column index is (ci*KH + ky)*KW + kx.
        let weight = Self::float_reshape(weight, Shape::new([cout, k]));
        let per_image = (k * p * dtype.size()).max(1);
        // Never more than one buffer may hold: WebGPU caps a storage binding at 128 MiB unless
        // the page asks for more.
        let max_buffer =
            usize::try_from(x.client.properties().memory.max_page_size).unwrap_or(usize::MAX);
        let budget = COLUMN_BYTES.load(Ordering::Relaxed).min(max_buffer);
        let chunk = (budget / per_image).clamp(1, b);

        let mut outs = Vec::with_capacity(b.div_ceil(chunk));
        let mut start = 0;
        while start < b {
            let bc = chunk.min(b - start);
            let columns = im2col(&x, start, bc, [kh, kw], [oh, ow], &options);
            // [Cout, K] @ [K, bc*P] -> [Cout, bc, P] -> [bc, Cout, P]
            let out = Self::float_matmul(weight.clone(), columns);
            let out = Self::float_reshape(out, Shape::new([cout, bc, p]));
            outs.push(Self::float_swap_dims(out, 0, 1));
            start += bc;
        }
        let out = if outs.len() == 1 {
            burn_cubecl::kernel::into_contiguous(outs.pop().expect("one chunk"))
        } else {
            Self::float_cat(outs, 0)
        };
        Self::float_reshape(out, out_shape)
    }
}

/// Columns `[Cin*KH*KW, bc*OH*OW]` of images `start..start + bc` of `x` (any strides).
fn im2col(
    x: &CubeTensor,
    start: usize,
    bc: usize,
    kernel: [usize; 2],
    out: [usize; 2],
    options: &ConvOptions<2>,
) -> CubeTensor {
    let [_, cin, _, _] = x.shape().dims();
    let rows = cin * kernel[0] * kernel[1];
    let cols = bc * out[0] * out[1];
    let columns = burn_cubecl::ops::numeric::empty_device_dtype(
        x.client.clone(),
        x.device.clone(),
        Shape::new([rows, cols]),
        x.dtype,
    );
    let len = rows * cols;
    let client = &x.client;
    let cube_dim = CubeDim::new(client, len);
    let cube_count = calculate_cube_count_elemwise(client, len, cube_dim);
    let pad = options.padding_begin();
    im2col_kernel::launch(
        client,
        cube_count,
        cube_dim,
        x.clone().into_tensor_arg(),
        columns.clone().into_tensor_arg(),
        Im2colArgsLaunch::new(
            start,
            out[0],
            out[1],
            kernel[0],
            kernel[1],
            options.stride[0],
            options.stride[1],
            options.dilation[0],
            options.dilation[1],
            pad[0],
            pad[1],
            cols,
            len,
        ),
        burn::backend::cubecl::dtype_to_storage_type(x.dtype),
    );
    columns
}

/// The kernel, apart from Burn's `Tensor` (CubeCL's prelude has its own).
mod kernel {
    use cubecl::prelude::*;

    #[derive(CubeLaunch, CubeType)]
    pub(super) struct Im2colArgs {
        batch_start: usize,
        out_h: usize,
        out_w: usize,
        kernel_h: usize,
        kernel_w: usize,
        stride_h: usize,
        stride_w: usize,
        dilation_h: usize,
        dilation_w: usize,
        pad_top: usize,
        pad_left: usize,
        n_cols: usize,
        len: usize,
    }

    /// One thread per column element: row `k = (ci*KH + ky)*KW + kx`, column `n = (b*OH + oy)*OW +
    /// ox`. Neighbouring threads take neighbouring output pixels, so reads of the input row and
    /// writes of the column row are both coalesced. Zero where the tap falls in the padding.
    #[cube(launch)]
    pub(super) fn im2col_kernel<F: Float>(
        input: &Tensor<F>,
        columns: &mut Tensor<F>,
        args: &Im2colArgs,
        #[define(F)] _dtype: ElemType,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= args.len {
            terminate!();
        }
        let k = pos / args.n_cols;
        let n = pos % args.n_cols;
        let ox = n % args.out_w;
        let rest = n / args.out_w;
        let oy = rest % args.out_h;
        let b = rest / args.out_h + args.batch_start;
        let kx = k % args.kernel_w;
        let rest = k / args.kernel_w;
        let ky = rest % args.kernel_h;
        let ci = rest / args.kernel_h;
        // Coordinates in the padded image; the padding itself reads as zero.
        let py = oy * args.stride_h + ky * args.dilation_h;
        let px = ox * args.stride_w + kx * args.dilation_w;
        let mut value = F::new(0.0);
        if py >= args.pad_top && px >= args.pad_left {
            let y = py - args.pad_top;
            let x = px - args.pad_left;
            if y < input.shape(2) && x < input.shape(3) {
                value = input[b * input.stride(0)
                    + ci * input.stride(1)
                    + y * input.stride(2)
                    + x * input.stride(3)];
            }
        }
        columns[pos] = value;
    }
}
