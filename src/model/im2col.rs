//! The convolution the UNet trains and samples with on GPU devices: our im2col kernel feeding
//! Burn's tuned matmul forward; backward, the input gradient as a matmul into columns folded back
//! by our col2im kernel and the weight gradient as a matmul against columns from the same im2col
//! kernel. NCHW in and out, with no layout copy of the input, the weights or the gradients
//! where images have 256 output pixels or more ([`Layout`]).
//!
//! Why it exists: on wgpu with f32 there are no tensor cores, so Burn's `conv2d` forward can only
//! autotune between its direct kernel and implicit GEMMs that all decline; a kernel profile of
//! `ddpm-cifar10` at batch 128 on an H100 put that direct kernel at 73% of all device time.
//! Expressing the forward as tensor ops (slices + concatenation + matmul,
//! [`super::conv::conv2d_gemm`]) made sampling 4.4x faster but training slower, because autodiff
//! then differentiates the slices. This op keeps the columns out of the graph: it is one node
//! with its own backward. Burn's own gradients (which this op used before) permute the input and
//! the output gradient to NHWC and back and build the weight gradient's columns from nine slice
//! assignments into a zeroed buffer; here one gather kernel writes them.
//!
//! The kernels are written in CubeCL's Rust dialect rather than as raw WGSL templates: the same
//! source then compiles to WGSL on the wgpu path (and WebGPU), to SPIR-V on the `vulkan` build
//! and to CUDA on the `cuda` build, where a WGSL template would fail to launch. The plain
//! tensor-op version they replace is [`super::conv::conv2d_gemm`] and Burn's `conv2d` (and its
//! `conv2d_x_backward` / `conv2d_weight_backward`); the parity tests compare them
//! (`tests/model.rs`, `tests/wgpu_parity.rs`).
//!
//! Only present with a GPU backend feature (`wgpu`, `cuda`): the op is a Burn backend extension
//! with implementations for the CubeCL backend, its fusion wrapper, autodiff and `flex` (where it
//! is Burn's `conv2d` and its gradients, so the autodiff plumbing is testable on the CPU).

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
    AutodiffBackend, Backend, Dispatch, Flex, TensorMetadata, backend_extension,
    tensor::FloatTensor,
};
use burn::tensor::{Shape, Slice, Tensor};
use burn_cubecl::CubeBackend;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::tensor::CubeTensor;
use cubecl::calculate_cube_count_elemwise;
use cubecl::prelude::CubeDim;
use kernel::{Col2imArgsLaunch, Im2colArgsLaunch, col2im_kernel, im2col_kernel};
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
/// into the next element-wise kernel), and its two gradients with Burn's signatures.
#[backend_extension(Autodiff, Flex, Cube, Fusion)]
pub trait Im2colConv: Backend {
    /// `[B, Cin, H, W]` * `[Cout, Cin / groups, KH, KW]` -> `[B, Cout, OH, OW]`.
    #[fusion(dtype = x, shape = output_shape(x, weight, options))]
    fn conv2d_im2col(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The gradient of [`Im2colConv::conv2d_im2col`] with respect to `x` (whose values are not
    /// read, only its shape), given the output's gradient `grad`.
    #[fusion(dtype = grad, shape = x)]
    fn conv2d_im2col_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// The gradient of [`Im2colConv::conv2d_im2col`] with respect to `weight` (whose values
    /// are not read, only its shape).
    #[fusion(dtype = grad, shape = weight)]
    fn conv2d_im2col_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
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

    fn conv2d_im2col_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_x_backward(x, weight, grad, options)
    }

    fn conv2d_im2col_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::conv2d_weight_backward(x, weight, grad, options)
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

        impl<B: Im2colConv> Backward<B, 2> for Im2colConvBackward {
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
                    let g = B::conv2d_im2col_x_backward(
                        x.clone(),
                        weight.clone(),
                        grad.clone(),
                        options.clone(),
                    );
                    grads.register::<B>(node.id, g);
                }
                if let Some(node) = node_weight {
                    let g = B::conv2d_im2col_weight_backward(x, weight, grad, options);
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

    // The gradients are values, not differentiated again (no second-order autodiff).

    fn conv2d_im2col_x_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::conv2d_im2col_x_backward(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            options,
        ))
    }

    fn conv2d_im2col_weight_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        Self::from_inner(B::conv2d_im2col_weight_backward(
            x.into_primitive(),
            weight.into_primitive(),
            grad.into_primitive(),
            options,
        ))
    }
}

/// How a batch chunk's columns are laid out in memory (row `k = (ci*KH + ky)*KW + kx`, pixel
/// `p = oy*OW + ox` of image `b`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    /// `[bc, K, P]`: one matrix per image. The forward is a batched matmul whose output
    /// `[bc, Cout, P]` is already NCHW, the input gradient's columns come from the NCHW output
    /// gradient as it is, and the weight gradient sums per-image products `[bc, Cout, K]`:
    /// no layout copy anywhere.
    PerImage,
    /// `[K, bc*P]`: one matrix for the chunk, so the matmul's other dimension is `bc*P`. Its
    /// output `[Cout, bc, P]` and the output gradient it is multiplied with need one transpose
    /// each (a pass over the output, a ninth of the columns for a 3x3).
    Shared,
}

/// The smallest image (in output pixels) whose per-image matmuls are left to themselves: below
/// it, `[Cout, K] @ [K, P]` is too thin to tile well and the chunk's images share one matmul.
const PER_IMAGE_MIN_PIXELS: usize = 256;

/// The geometry of one convolution's lowering.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    cin: usize,
    cout: usize,
    kernel: [usize; 2],
    out: [usize; 2],
    /// Rows of the columns, `Cin*KH*KW`.
    k: usize,
    /// Output pixels per image, `OH*OW`.
    p: usize,
    layout: Layout,
}

impl Geometry {
    fn new(x: &Shape, weight: &Shape, options: &ConvOptions<2>) -> Geometry {
        let [batch, cin, _, _] = x.dims();
        let [cout, cin_w, kh, kw] = weight.dims();
        assert_eq!(
            cin, cin_w,
            "convolution weight expects {cin_w} input channels, the input has {cin}"
        );
        let [_, _, oh, ow] = output_shape(x, weight, options).dims();
        let (k, p) = (cin * kh * kw, oh * ow);
        // Per image when its matmul is wide enough and, for the weight gradient, its per-image
        // products `[Cout, K]` are no larger than its columns `[K, P]`.
        let layout = if p >= PER_IMAGE_MIN_PIXELS && p >= cout {
            Layout::PerImage
        } else {
            Layout::Shared
        };
        Geometry {
            batch,
            cin,
            cout,
            kernel: [kh, kw],
            out: [oh, ow],
            k,
            p,
            layout,
        }
    }

    /// The batch chunks `(start, len)` whose columns fit the column budget (at least one image,
    /// never more than one device buffer: WebGPU caps a storage binding at 128 MiB unless the
    /// page asks for more).
    fn chunks(&self, x: &CubeTensor) -> Vec<(usize, usize)> {
        let per_image = (self.k * self.p * x.dtype.size()).max(1);
        let max_buffer =
            usize::try_from(x.client.properties().memory.max_page_size).unwrap_or(usize::MAX);
        let budget = COLUMN_BYTES.load(Ordering::Relaxed).min(max_buffer);
        let chunk = (budget / per_image).clamp(1, self.batch.max(1));
        (0..self.batch)
            .step_by(chunk)
            .map(|start| (start, chunk.min(self.batch - start)))
            .collect()
    }
}

/// Images `start..start + len` of `t` `[B, C, OH, OW]` as `[len, C, OH*OW]`.
fn images(t: &CubeTensor, start: usize, len: usize, c: usize, p: usize) -> CubeTensor {
    let t = if len == t.shape()[0] {
        t.clone()
    } else {
        CubeBackend::float_slice(t.clone(), &[Slice::from(start..start + len)])
    };
    CubeBackend::float_reshape(t, Shape::new([len, c, p]))
}

/// `[len, C, P]` -> `[C, len*P]`, the one copy of [`Layout::Shared`].
fn channels_first(t: CubeTensor) -> CubeTensor {
    let [len, c, p] = t.shape().dims();
    let t = into_contiguous(CubeBackend::float_swap_dims(t, 0, 1));
    CubeBackend::float_reshape(t, Shape::new([c, len * p]))
}

impl Im2colConv for CubeBackend {
    fn conv2d_im2col(x: CubeTensor, weight: CubeTensor, options: ConvOptions<2>) -> CubeTensor {
        // Grouped (incl. depthwise) convolutions have their own kernels in Burn; an empty batch
        // has nothing to lower.
        if options.groups != 1 || x.shape()[0] == 0 {
            return Self::conv2d(x, weight, None, options);
        }
        let out_shape = output_shape(&x.shape(), &weight.shape(), &options);
        let g = Geometry::new(&x.shape(), &weight.shape(), &options);
        let (cout, k, p) = (g.cout, g.k, g.p);
        // [Cout, Cin, KH, KW] -> [Cout, Cin*KH*KW]: the column index is (ci*KH + ky)*KW + kx.
        let weight = Self::float_reshape(weight, Shape::new([cout, k]));
        let mut outs: Vec<CubeTensor> = g
            .chunks(&x)
            .into_iter()
            .map(|(start, bc)| {
                let columns = im2col(&x, start, bc, &g, &options);
                match g.layout {
                    // [1, Cout, K] @ [bc, K, P] -> [bc, Cout, P]
                    Layout::PerImage => Self::float_matmul(
                        Self::float_reshape(weight.clone(), Shape::new([1, cout, k])),
                        columns,
                    ),
                    // [Cout, K] @ [K, bc*P] -> [Cout, bc, P] -> [bc, Cout, P]
                    Layout::Shared => {
                        let out = Self::float_matmul(weight.clone(), columns);
                        let out = Self::float_reshape(out, Shape::new([cout, bc, p]));
                        Self::float_swap_dims(out, 0, 1)
                    }
                }
            })
            .collect();
        let out = if outs.len() == 1 {
            into_contiguous(outs.pop().expect("one chunk"))
        } else {
            Self::float_cat(outs, 0)
        };
        Self::float_reshape(out, out_shape)
    }

    fn conv2d_im2col_x_backward(
        x: CubeTensor,
        weight: CubeTensor,
        grad: CubeTensor,
        options: ConvOptions<2>,
    ) -> CubeTensor {
        if options.groups != 1 || x.shape()[0] == 0 {
            return Self::conv2d_x_backward(x, weight, grad, options);
        }
        let g = Geometry::new(&x.shape(), &weight.shape(), &options);
        let (cout, k, p) = (g.cout, g.k, g.p);
        let dx = burn_cubecl::ops::numeric::empty_device_dtype(
            grad.client.clone(),
            grad.device.clone(),
            x.shape(),
            grad.dtype,
        );
        // W^T as a view: [Cout, K] -> [1, Cout, K] -> [1, K, Cout].
        let wt = Self::float_swap_dims(Self::float_reshape(weight, Shape::new([1, cout, k])), 1, 2);
        for (start, bc) in g.chunks(&x) {
            let dy = images(&grad, start, bc, cout, p);
            let columns = match g.layout {
                // [1, K, Cout] @ [bc, Cout, P] -> [bc, K, P]
                Layout::PerImage => Self::float_matmul(wt.clone(), dy),
                // [K, Cout] @ [Cout, bc*P] -> [K, bc*P]
                Layout::Shared => Self::float_matmul(
                    Self::float_reshape(wt.clone(), Shape::new([k, cout])),
                    channels_first(dy),
                ),
            };
            col2im(&columns, &dx, start, bc, &g, &options);
        }
        dx
    }

    fn conv2d_im2col_weight_backward(
        x: CubeTensor,
        weight: CubeTensor,
        grad: CubeTensor,
        options: ConvOptions<2>,
    ) -> CubeTensor {
        if options.groups != 1 || x.shape()[0] == 0 {
            return Self::conv2d_weight_backward(x, weight, grad, options);
        }
        let weight_shape = weight.shape();
        let g = Geometry::new(&x.shape(), &weight_shape, &options);
        let (cout, k, p) = (g.cout, g.k, g.p);
        let mut dw: Option<CubeTensor> = None;
        for (start, bc) in g.chunks(&x) {
            let dy = images(&grad, start, bc, cout, p);
            let columns = im2col(&x, start, bc, &g, &options);
            let part = match g.layout {
                // [bc, Cout, P] @ [bc, P, K] -> [bc, Cout, K], summed over the images.
                Layout::PerImage => {
                    let per_image = Self::float_matmul(dy, Self::float_swap_dims(columns, 1, 2));
                    Self::float_reshape(Self::float_sum_dim(per_image, 0), Shape::new([cout, k]))
                }
                // [Cout, bc*P] @ [bc*P, K] -> [Cout, K]
                Layout::Shared => {
                    Self::float_matmul(channels_first(dy), Self::float_swap_dims(columns, 0, 1))
                }
            };
            dw = Some(match dw {
                None => part,
                Some(sum) => Self::float_add(sum, part),
            });
        }
        Self::float_reshape(dw.expect("a non-empty batch"), weight_shape)
    }
}

/// The columns of images `start..start + bc` of `x` (any strides) in `g.layout`.
fn im2col(
    x: &CubeTensor,
    start: usize,
    bc: usize,
    g: &Geometry,
    options: &ConvOptions<2>,
) -> CubeTensor {
    let shape = match g.layout {
        Layout::PerImage => Shape::new([bc, g.k, g.p]),
        Layout::Shared => Shape::new([g.k, bc * g.p]),
    };
    let columns = burn_cubecl::ops::numeric::empty_device_dtype(
        x.client.clone(),
        x.device.clone(),
        shape,
        x.dtype,
    );
    let len = g.k * bc * g.p;
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
            g.out[1],
            g.kernel[0],
            g.kernel[1],
            options.stride[0],
            options.stride[1],
            options.dilation[0],
            options.dilation[1],
            pad[0],
            pad[1],
            g.k,
            g.p,
            bc * g.p,
            u32::from(g.layout == Layout::PerImage),
            len,
        ),
        burn::backend::cubecl::dtype_to_storage_type(x.dtype),
    );
    columns
}

/// The adjoint of [`im2col`]: images `start..start + bc` of `dx` (contiguous `[B, Cin, H, W]`)
/// from their columns' gradient (a matmul's output in `g.layout`, read through its strides).
/// One thread per input element sums the taps that read it, so nothing races.
fn col2im(
    columns: &CubeTensor,
    dx: &CubeTensor,
    start: usize,
    bc: usize,
    g: &Geometry,
    options: &ConvOptions<2>,
) {
    let [_, cin, h, w] = dx.shape().dims();
    let s = columns.meta.strides();
    // (per image, per row, per pixel) strides of the element (b, k, p).
    let (sb, sk, sp) = match g.layout {
        Layout::PerImage => (s[0], s[1], s[2]),
        Layout::Shared => (g.p * s[1], s[0], s[1]),
    };
    let len = bc * cin * h * w;
    let client = &dx.client;
    let cube_dim = CubeDim::new(client, len);
    let cube_count = calculate_cube_count_elemwise(client, len, cube_dim);
    let pad = options.padding_begin();
    col2im_kernel::launch(
        client,
        cube_count,
        cube_dim,
        columns.clone().into_tensor_arg(),
        dx.clone().into_tensor_arg(),
        Col2imArgsLaunch::new(
            start * g.cin * h * w,
            cin,
            h,
            w,
            g.out[0],
            g.out[1],
            g.kernel[0],
            g.kernel[1],
            options.stride[0],
            options.stride[1],
            options.dilation[0],
            options.dilation[1],
            pad[0],
            pad[1],
            sb,
            sk,
            sp,
            len,
        ),
        burn::backend::cubecl::dtype_to_storage_type(dx.dtype),
    );
}

/// The kernels, apart from Burn's `Tensor` (CubeCL's prelude has its own).
mod kernel {
    use cubecl::prelude::*;

    #[derive(CubeLaunch, CubeType)]
    pub(super) struct Im2colArgs {
        batch_start: usize,
        out_w: usize,
        kernel_h: usize,
        kernel_w: usize,
        stride_h: usize,
        stride_w: usize,
        dilation_h: usize,
        dilation_w: usize,
        pad_top: usize,
        pad_left: usize,
        rows: usize,
        pixels: usize,
        n_cols: usize,
        per_image: u32,
        len: usize,
    }

    /// One thread per column element, in the columns' memory order: row `k = (ci*KH + ky)*KW +
    /// kx`, pixel `p = oy*OW + ox` of image `b`, at `(b*K + k)*P + p` per image or `k*bc*P +
    /// b*P + p` shared. Neighbouring threads take neighbouring output pixels, so reads of the
    /// input row and writes of the column row are both coalesced. Zero where the tap falls in
    /// the padding.
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
        let p = pos % args.pixels;
        let mut k = pos / args.n_cols;
        let mut b = pos % args.n_cols / args.pixels;
        if args.per_image == 1 {
            let image_row = pos / args.pixels;
            k = image_row % args.rows;
            b = image_row / args.rows;
        }
        let b = b + args.batch_start;
        let ox = p % args.out_w;
        let oy = p / args.out_w;
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

    #[derive(CubeLaunch, CubeType)]
    pub(super) struct Col2imArgs {
        out_offset: usize,
        channels: usize,
        height: usize,
        width: usize,
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
        col_stride_b: usize,
        col_stride_k: usize,
        col_stride_p: usize,
        len: usize,
    }

    /// One thread per input element `(b, ci, y, x)`: the sum, over the taps `(ky, kx)` whose
    /// output pixel `(oy, ox)` read it (`oy*stride + ky*dilation = y + pad`), of the columns'
    /// gradient at row `(ci*KH + ky)*KW + kx`, pixel `oy*OW + ox`.
    #[cube(launch)]
    pub(super) fn col2im_kernel<F: Float>(
        columns: &Tensor<F>,
        dx: &mut Tensor<F>,
        args: &Col2imArgs,
        #[define(F)] _dtype: ElemType,
    ) {
        let pos = ABSOLUTE_POS;
        if pos >= args.len {
            terminate!();
        }
        let x = pos % args.width;
        let rest = pos / args.width;
        let y = rest % args.height;
        let rest = rest / args.height;
        let ci = rest % args.channels;
        let b = rest / args.channels;
        let py = y + args.pad_top;
        let px = x + args.pad_left;
        let image = b * args.col_stride_b;
        let mut acc = F::new(0.0);
        for ky in 0..args.kernel_h {
            let shift_y = ky * args.dilation_h;
            if py >= shift_y {
                let ty = py - shift_y;
                let oy = ty / args.stride_h;
                if oy * args.stride_h == ty && oy < args.out_h {
                    for kx in 0..args.kernel_w {
                        let shift_x = kx * args.dilation_w;
                        if px >= shift_x {
                            let tx = px - shift_x;
                            let ox = tx / args.stride_w;
                            if ox * args.stride_w == tx && ox < args.out_w {
                                let k = (ci * args.kernel_h + ky) * args.kernel_w + kx;
                                let p = oy * args.out_w + ox;
                                acc +=
                                    columns[image + k * args.col_stride_k + p * args.col_stride_p];
                            }
                        }
                    }
                }
            }
        }
        dx[args.out_offset + pos] = acc;
    }
}
