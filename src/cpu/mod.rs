//! The UNet's heavy ops on the CPU (`flex`), as our own kernels: convolution (forward, input,
//! weight and bias gradients), GroupNorm fused with its SiLU (forward and backward) and the
//! attention softmax, each one autodiff node with its own backward; and the training step's
//! element-wise passes (AdamW, EMA, the global-norm clip) as one pass each ([`optim`]).
//!
//! Why: a per-op profile of a `flex` training step (`examples/bench/op_profile.py`, README)
//! put 69% of it in Burn's convolution (its weight gradient alone 30%: a convolution with
//! batch and channels swapped, whose GEMMs have 9 columns) and 16% in GroupNorm and SiLU as
//! nine separate tensor ops with scalar `expf`. Here the convolution is im2col + one GEMM per
//! image and gradient ([`conv`]), the norm one kernel forward and one backward ([`norm`]).
//!
//! The kernels are plain Rust over slices (the `gemm` crate for the products, rayon for
//! threads), so the browser's CPU fallback runs them too. They are a Burn backend extension
//! ([`CpuKernels`]) for `Flex` and `Autodiff<Flex>`; every other device keeps Burn's ops, and
//! non-f32 tensors fall back to Burn's.
//!
//! Results do not depend on how rayon schedules the work (fixed partial sums, added in order),
//! so a run resumed on the same machine ends with the weights of an uninterrupted one. Most do
//! not depend on the thread count either; the exception is the forward convolution, whose split
//! of the batch into GEMMs follows the thread count, and the GEMM's blocking of a long sum (more
//! than a few hundred terms) follows the GEMM's size: on another core count its outputs may
//! differ in the last bits. Parity with Burn's ops (outputs and all gradients) is tested in
//! `tests/model.rs`.

pub mod conv;
mod gemm;
pub mod math;
pub mod norm;
pub mod optim;
mod scratch;
mod softmax;

use burn::backend::autodiff::{
    Autodiff, NodeId,
    checkpoint::{base::Checkpointer, strategy::CheckpointStrategy},
    grads::Gradients,
    ops::{Backward, Ops, OpsKind},
};
use burn::backend::flex::{FlexTensor, Layout};
use burn::backend::ops::{ConvOptions, ModuleOps};
use burn::backend::{
    AutodiffBackend, Backend, Dispatch, DispatchDevice, Flex, backend_extension,
    tensor::FloatTensor,
};
use burn::tensor::{Bytes, DType, Device, Shape, Tensor};
use conv::{Bias, ConvGeometry, Wanted};
use norm::NormGeometry;

/// Our kernels as a Burn backend extension.
#[backend_extension(Autodiff, Flex)]
pub trait CpuKernels: Backend {
    /// `[B, Cin, H, W]` * `[Cout, Cin, KH, KW]` -> `[B, Cout, OH, OW]`.
    fn cpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// [`CpuKernels::cpu_conv2d`] plus a bias `[Cout]` or `[B, Cout]`.
    fn cpu_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self>;

    /// `act(n * scale + shift)` with `n` the group-normalised `x` `[B, C, H, W]`, `scale` and
    /// `shift` `[B, C]`, `act` SiLU or the identity.
    fn cpu_group_norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self>;

    /// `softmax(scale * x)` over the last dimension.
    fn cpu_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self>;

    /// One AdamW step of parameter `p` with gradient `g` and moments `m`, `v` (ignored on the
    /// first step, `time` 1): the new `(p, m, v)`, updated in place where they are not shared.
    #[allow(clippy::too_many_arguments)]
    fn cpu_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        lr: f64,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>);

    /// `ema * decay + p * (1 - decay)` (`ema` updated in place where it is not shared).
    fn cpu_ema(ema: FloatTensor<Self>, p: FloatTensor<Self>, decay: f64) -> FloatTensor<Self>;

    /// `sum(g * g)` as a one-element tensor.
    fn cpu_sum_squares(g: FloatTensor<Self>) -> FloatTensor<Self>;

    /// `g * c` for a one-element `c` (in place where `g` is not shared).
    fn cpu_scale(g: FloatTensor<Self>, c: FloatTensor<Self>) -> FloatTensor<Self>;
}

/// Runs `f` on a thread of rayon's global pool, the pool flex and these kernels share: the
/// caller's own (serial) work then runs on one of the pool's threads and every parallel region
/// starts there, instead of the caller handing each region to the pool and sleeping until it
/// ends. On 2 cores that is the difference between two busy threads and three (the caller and
/// two workers) plus a wake-up per region. The pool's threads get 16 MiB stacks (a main
/// thread's default is 8 MiB; rayon's workers get 2 MiB), room for the CLI's deepest calls.
pub fn run_in_pool<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    // Fails only when the pool already exists, which is as good.
    let _ = rayon::ThreadPoolBuilder::new()
        .stack_size(16 << 20)
        .build_global();
    rayon::scope(|_| f())
}

/// Runs `f` on every item: on rayon's pool, or in order on this thread when the pool has one
/// thread or there is one item.
pub(crate) fn par_each<T: Send>(items: Vec<T>, f: impl Fn(T) + Sync + Send) {
    if items.len() <= 1 || rayon::current_num_threads() <= 1 {
        items.into_iter().for_each(f);
    } else {
        use rayon::prelude::*;
        items.into_par_iter().for_each(f);
    }
}

/// A device whose tensors these kernels can take: `flex`, with or without autodiff.
pub fn is_cpu(device: &Device) -> bool {
    match device.as_dispatch() {
        DispatchDevice::Flex(_) => true,
        DispatchDevice::Autodiff(inner) => matches!(**inner, DispatchDevice::Flex(_)),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// Whether [`conv2d`] takes this convolution: a `flex` f32 tensor and groups 1.
pub fn conv2d_supported(x: &Tensor<4>, options: &ConvOptions<2>) -> bool {
    options.groups == 1 && x.dtype() == DType::F32 && is_cpu(&x.device())
}

/// Whether [`group_norm`] takes this tensor: `flex` and f32.
pub fn group_norm_supported(x: &Tensor<4>) -> bool {
    supported(x)
}

/// Whether the element-wise kernels ([`adamw`], [`ema`], [`sum_squares`], [`scale`]) take
/// this tensor: `flex` and f32.
pub fn supported<const D: usize>(x: &Tensor<D>) -> bool {
    x.dtype() == DType::F32 && is_cpu(&x.device())
}

/// `softmax(scale * x)` over the last dimension of a `flex` tensor (see [`supported`]).
pub fn softmax<const D: usize>(x: Tensor<D>, scale: f64) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::cpu_softmax(x.into_dispatch(), scale))
}

/// One AdamW step on `flex` tensors (see [`supported`]): the new parameter and moments. On the
/// first step (`time` 1) `m` and `v` are not read.
pub fn adamw<const D: usize>(
    p: Tensor<D>,
    g: Tensor<D>,
    m: Tensor<D>,
    v: Tensor<D>,
    step: optim::AdamWStep,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let (p, m, v) = Dispatch::cpu_adamw(
        p.into_dispatch(),
        g.into_dispatch(),
        m.into_dispatch(),
        v.into_dispatch(),
        step.lr,
        step.beta_1,
        step.beta_2,
        step.epsilon,
        step.weight_decay,
        step.time,
    );
    (
        Tensor::from_dispatch(p),
        Tensor::from_dispatch(m),
        Tensor::from_dispatch(v),
    )
}

/// `ema * decay + p * (1 - decay)` on `flex` tensors.
pub fn ema<const D: usize>(ema: Tensor<D>, p: Tensor<D>, decay: f64) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::cpu_ema(
        ema.into_dispatch(),
        p.into_dispatch(),
        decay,
    ))
}

/// `sum(g * g)` (`[1]`) of a `flex` tensor.
pub fn sum_squares<const D: usize>(g: Tensor<D>) -> Tensor<1> {
    Tensor::from_dispatch(Dispatch::cpu_sum_squares(g.into_dispatch()))
}

/// `g * c` for a one-element `c`, on `flex` tensors.
pub fn scale<const D: usize>(g: Tensor<D>, c: Tensor<1>) -> Tensor<D> {
    Tensor::from_dispatch(Dispatch::cpu_scale(g.into_dispatch(), c.into_dispatch()))
}

/// `conv2d(x, weight, bias, options)` by our kernels (see [`conv2d_supported`]).
pub fn conv2d(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Option<Tensor<1>>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    Tensor::<4>::from_dispatch(match bias {
        Some(b) => Dispatch::cpu_conv2d_bias(
            x.into_dispatch(),
            weight.into_dispatch(),
            b.into_dispatch(),
            options,
        ),
        None => Dispatch::cpu_conv2d(x.into_dispatch(), weight.into_dispatch(), options),
    })
}

/// [`conv2d`] with a bias per image and output channel, `[B, Cout]`.
pub fn conv2d_image_bias(
    x: Tensor<4>,
    weight: Tensor<4>,
    bias: Tensor<2>,
    options: ConvOptions<2>,
) -> Tensor<4> {
    Tensor::<4>::from_dispatch(Dispatch::cpu_conv2d_bias(
        x.into_dispatch(),
        weight.into_dispatch(),
        bias.into_dispatch(),
        options,
    ))
}

/// GroupNorm with a per-image affine `[B, C]` and an optional SiLU. See
/// [`group_norm_supported`].
pub fn group_norm(
    x: Tensor<4>,
    scale: Tensor<2>,
    shift: Tensor<2>,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> Tensor<4> {
    Tensor::<4>::from_dispatch(Dispatch::cpu_group_norm(
        x.into_dispatch(),
        scale.into_dispatch(),
        shift.into_dispatch(),
        groups,
        epsilon,
        silu,
    ))
}

// ---------------------------------------------------------------- flex tensors <-> slices

/// `t` as a tensor whose storage is exactly its elements in row-major order and not shared, so
/// that a kernel may overwrite it (a copy only when `t` is a view or shared).
fn owned(t: FlexTensor) -> FlexTensor {
    let n = t.layout().shape().num_elements();
    let whole = t.layout().contiguous_offsets() == Some((0, n)) && t.storage::<f32>().len() == n;
    if whole { t } else { t.to_contiguous() }
}

/// The elements of an [`owned`] tensor, to overwrite (copy-on-write if it is still shared).
fn elements(t: &mut FlexTensor) -> &mut [f32] {
    t.storage_mut::<f32>()
}

/// The f32 elements of `t` in row-major order (copied only when `t` is a strided view).
fn contiguous(t: &FlexTensor) -> std::borrow::Cow<'_, [f32]> {
    match t.layout().contiguous_offsets() {
        Some((start, end)) => std::borrow::Cow::Borrowed(&t.storage::<f32>()[start..end]),
        None => std::borrow::Cow::Owned(t.to_contiguous().storage::<f32>().to_vec()),
    }
}

fn dims4(t: &FlexTensor) -> [usize; 4] {
    let s = t.layout().shape();
    [s[0], s[1], s[2], s[3]]
}

fn tensor(data: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(data),
        Layout::contiguous(shape),
        DType::F32,
    )
}

fn padding(options: &ConvOptions<2>) -> [(usize, usize); 2] {
    let begin = options.padding_begin();
    let end = options.padding_end();
    [(begin[0], end[0]), (begin[1], end[1])]
}

fn geometry(x: &FlexTensor, weight: &FlexTensor, options: &ConvOptions<2>) -> ConvGeometry {
    ConvGeometry::new(
        dims4(x),
        dims4(weight),
        options.stride,
        options.dilation,
        padding(options),
    )
    .unwrap_or_else(|e| panic!("convolution: {e}"))
}

/// Ours only for f32 with groups 1; anything else is Burn's.
fn conv_is_ours(x: &FlexTensor, options: &ConvOptions<2>) -> bool {
    x.dtype() == DType::F32 && options.groups == 1
}

fn conv_forward(
    x: &FlexTensor,
    weight: &FlexTensor,
    bias: Option<&FlexTensor>,
    options: &ConvOptions<2>,
) -> FlexTensor {
    let g = geometry(x, weight, options);
    let (xs, ws) = (contiguous(x), contiguous(weight));
    let bs = bias.map(contiguous);
    let bias = match (&bs, bias.map(|b| b.layout().shape().num_dims())) {
        (Some(b), Some(1)) => Bias::Channel(b),
        (Some(b), Some(_)) => Bias::Image(b),
        _ => Bias::None,
    };
    let out = conv::forward(&g, &xs, &ws, bias);
    tensor(
        out,
        Shape::new([g.batch, g.out_channels, g.output[0], g.output[1]]),
    )
}

impl CpuKernels for Flex {
    fn cpu_conv2d(x: FlexTensor, weight: FlexTensor, options: ConvOptions<2>) -> FlexTensor {
        if !conv_is_ours(&x, &options) {
            return Flex::conv2d(x, weight, None, options);
        }
        conv_forward(&x, &weight, None, &options)
    }

    fn cpu_conv2d_bias(
        x: FlexTensor,
        weight: FlexTensor,
        bias: FlexTensor,
        options: ConvOptions<2>,
    ) -> FlexTensor {
        if !conv_is_ours(&x, &options) {
            if bias.layout().shape().num_dims() == 1 {
                return Flex::conv2d(x, weight, Some(bias), options);
            }
            let out = Flex::conv2d(x, weight, None, options);
            return add_image_bias(out, bias);
        }
        conv_forward(&x, &weight, Some(&bias), &options)
    }

    fn cpu_group_norm(
        x: FlexTensor,
        scale: FlexTensor,
        shift: FlexTensor,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FlexTensor {
        group_norm_forward(&x, &scale, &shift, groups, epsilon, silu).0
    }

    fn cpu_softmax(x: FlexTensor, scale: f64) -> FlexTensor {
        softmax_forward(&x, scale)
    }

    fn cpu_adamw(
        p: FlexTensor,
        g: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        lr: f64,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (mut p, mut m, mut v) = (owned(p), owned(m), owned(v));
        let step = optim::AdamWStep {
            lr,
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            time,
        };
        optim::adamw(
            elements(&mut p),
            &contiguous(&g),
            elements(&mut m),
            elements(&mut v),
            step,
        );
        (p, m, v)
    }

    fn cpu_ema(ema: FlexTensor, p: FlexTensor, decay: f64) -> FlexTensor {
        let mut ema = owned(ema);
        optim::ema(elements(&mut ema), &contiguous(&p), decay);
        ema
    }

    fn cpu_sum_squares(g: FlexTensor) -> FlexTensor {
        let s = optim::sum_squares(&contiguous(&g)) as f32;
        tensor(vec![s], Shape::new([1]))
    }

    fn cpu_scale(g: FlexTensor, c: FlexTensor) -> FlexTensor {
        let c = contiguous(&c)[0];
        let mut g = owned(g);
        optim::scale(elements(&mut g), c);
        g
    }
}

/// `out [B, C, H, W] + bias [B, C]` with Burn's ops.
fn add_image_bias(out: FlexTensor, bias: FlexTensor) -> FlexTensor {
    use burn::backend::ops::FloatTensorOps;
    let s = bias.layout().shape().clone();
    let bias = Flex::float_reshape(bias, Shape::new([s[0], s[1], 1, 1]));
    Flex::float_add(out, bias)
}

fn softmax_forward(x: &FlexTensor, scale: f64) -> FlexTensor {
    let shape = x.layout().shape().clone();
    let n = shape[shape.num_dims() - 1];
    tensor(softmax::forward(&contiguous(x), n, scale as f32), shape)
}

/// Softmax node; parent the input, state the output.
#[derive(Debug)]
struct SoftmaxBackward;

impl Backward<Flex, 1> for SoftmaxBackward {
    type State = (FlexTensor, f64);

    fn backward(
        self,
        ops: Ops<Self::State, 1>,
        grads: &mut Gradients,
        _checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<Flex>(&ops.node);
        let (y, scale) = ops.state;
        if let Some(node) = &ops.parents[0] {
            let shape = y.layout().shape().clone();
            let n = shape[shape.num_dims() - 1];
            let dx = softmax::backward(&contiguous(&y), &contiguous(&dy), n, scale as f32);
            grads.register::<Flex>(node.id, tensor(dx, shape));
        }
    }
}

fn group_norm_forward(
    x: &FlexTensor,
    scale: &FlexTensor,
    shift: &FlexTensor,
    groups: usize,
    epsilon: f64,
    silu: bool,
) -> (FlexTensor, FlexTensor) {
    assert_eq!(
        x.dtype(),
        DType::F32,
        "the CPU group norm takes f32 (callers check group_norm_supported)"
    );
    let shape = dims4(x);
    let g = NormGeometry::new(shape, groups).unwrap_or_else(|e| panic!("group norm: {e}"));
    let (y, stats) = norm::forward(
        &g,
        &contiguous(x),
        &contiguous(scale),
        &contiguous(shift),
        epsilon,
        silu,
    );
    (
        tensor(y, Shape::new(shape)),
        tensor(stats, Shape::new([g.batch, groups, 2])),
    )
}

// ---------------------------------------------------------------- autodiff

/// The gradients of one convolution node, registered on its parents.
fn conv_backward(
    parents: [Option<NodeId>; 3],
    dy: FlexTensor,
    x: &FlexTensor,
    w: &FlexTensor,
    bias_rank: Option<usize>,
    options: &ConvOptions<2>,
    grads: &mut Gradients,
) {
    let [node_x, node_w, node_b] = parents;
    let g = geometry(x, w, options);
    let wanted = Wanted {
        x: node_x.is_some(),
        weight: node_w.is_some(),
        bias: node_b.is_some(),
    };
    let gr = conv::backward(&g, &contiguous(x), &contiguous(w), &contiguous(&dy), wanted);
    if let (Some(node), Some(dx)) = (node_x, gr.x) {
        grads.register::<Flex>(node, tensor(dx, x.layout().shape().clone()));
    }
    if let (Some(node), Some(dw)) = (node_w, gr.weight) {
        grads.register::<Flex>(node, tensor(dw, w.layout().shape().clone()));
    }
    if let (Some(node), Some(db), Some(rank)) = (node_b, gr.bias, bias_rank) {
        let cout = g.out_channels;
        let grad = if rank == 1 {
            // The per-image sums added over the batch, in order.
            let mut sums = vec![0.0f64; cout];
            for img in db.chunks(cout) {
                for (s, v) in sums.iter_mut().zip(img) {
                    *s += *v as f64;
                }
            }
            tensor(
                sums.into_iter().map(|v| v as f32).collect(),
                Shape::new([cout]),
            )
        } else {
            tensor(db, Shape::new([g.batch, cout]))
        };
        grads.register::<Flex>(node, grad);
    }
}

/// Convolution node with a bias; parents input, weight, bias (`[Cout]` or `[B, Cout]`).
#[derive(Debug)]
struct ConvBiasBackward;

impl Backward<Flex, 3> for ConvBiasBackward {
    type State = (NodeId, NodeId, usize, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 3>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, w_state, bias_rank, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
        let w = checkpointer.retrieve_node_output::<FlexTensor>(w_state);
        let [a, b, c] = &ops.parents;
        conv_backward(
            [a, b, c].map(|p| p.as_ref().map(|n| n.id)),
            dy,
            &x,
            &w,
            Some(bias_rank),
            &options,
            grads,
        );
    }
}

/// Convolution node without a bias; parents input, weight.
#[derive(Debug)]
struct ConvBackward;

impl Backward<Flex, 2> for ConvBackward {
    type State = (NodeId, NodeId, ConvOptions<2>);

    fn backward(
        self,
        ops: Ops<Self::State, 2>,
        grads: &mut Gradients,
        checkpointer: &mut Checkpointer,
    ) {
        let dy = grads.consume::<Flex>(&ops.node);
        let (x_state, w_state, options) = ops.state;
        let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
        let w = checkpointer.retrieve_node_output::<FlexTensor>(w_state);
        let [a, b] = &ops.parents;
        conv_backward(
            [a.as_ref().map(|n| n.id), b.as_ref().map(|n| n.id), None],
            dy,
            &x,
            &w,
            None,
            &options,
            grads,
        );
    }
}

impl<C: CheckpointStrategy> CpuKernels for Autodiff<Flex, C> {
    fn cpu_conv2d(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        if !conv_is_ours(x.primitive(), &options) {
            // Burn's own node (the non-f32 fallback).
            return Self::conv2d(x, weight, None, options);
        }
        let guards = [x.node(), weight.node()];
        match ConvBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let w_state = prep.checkpoint(&weight);
                let out = conv_forward(x.primitive(), weight.primitive(), None, &options);
                prep.finish((x_state, w_state, options), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(conv_forward(
                x.primitive(),
                weight.primitive(),
                None,
                &options,
            )),
        }
    }

    fn cpu_conv2d_bias(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        bias: FloatTensor<Self>,
        options: ConvOptions<2>,
    ) -> FloatTensor<Self> {
        let rank = bias.primitive().layout().shape().num_dims();
        if !conv_is_ours(x.primitive(), &options) {
            // Burn's own node (the non-f32 fallback).
            if rank == 1 {
                return Self::conv2d(x, weight, Some(bias), options);
            }
            use burn::backend::ops::FloatTensorOps;
            let s = bias.primitive().layout().shape().clone();
            let out = Self::conv2d(x, weight, None, options);
            return Self::float_add(
                out,
                Self::float_reshape(bias, Shape::new([s[0], s[1], 1, 1])),
            );
        }
        let guards = [x.node(), weight.node(), bias.node()];
        match ConvBiasBackward
            .prepare::<C>(guards)
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let w_state = prep.checkpoint(&weight);
                let out = conv_forward(
                    x.primitive(),
                    weight.primitive(),
                    Some(bias.primitive()),
                    &options,
                );
                prep.finish((x_state, w_state, rank, options), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(conv_forward(
                x.primitive(),
                weight.primitive(),
                Some(bias.primitive()),
                &options,
            )),
        }
    }

    fn cpu_group_norm(
        x: FloatTensor<Self>,
        scale: FloatTensor<Self>,
        shift: FloatTensor<Self>,
        groups: usize,
        epsilon: f64,
        silu: bool,
    ) -> FloatTensor<Self> {
        /// Parents: input, scale, shift.
        #[derive(Debug)]
        struct NormBackward;

        impl Backward<Flex, 3> for NormBackward {
            type State = (NodeId, NodeId, NodeId, FlexTensor, usize, bool);

            fn backward(
                self,
                ops: Ops<Self::State, 3>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_scale, node_shift] = ops.parents;
                let dy = grads.consume::<Flex>(&ops.node);
                let (x_state, scale_state, shift_state, stats, groups, silu) = ops.state;
                let x = checkpointer.retrieve_node_output::<FlexTensor>(x_state);
                let scale = checkpointer.retrieve_node_output::<FlexTensor>(scale_state);
                let shift = checkpointer.retrieve_node_output::<FlexTensor>(shift_state);
                let shape = dims4(&x);
                let g = NormGeometry::new(shape, groups).expect("checked in the forward pass");
                let (dx, dscale, dshift) = norm::backward(
                    &g,
                    &contiguous(&x),
                    &contiguous(&scale),
                    &contiguous(&shift),
                    &contiguous(&stats),
                    &contiguous(&dy),
                    silu,
                );
                let bc = Shape::new([g.batch, g.channels]);
                if let Some(node) = node_x {
                    grads.register::<Flex>(node.id, tensor(dx, Shape::new(shape)));
                }
                if let Some(node) = node_scale {
                    grads.register::<Flex>(node.id, tensor(dscale, bc.clone()));
                }
                if let Some(node) = node_shift {
                    grads.register::<Flex>(node.id, tensor(dshift, bc));
                }
            }
        }

        let guards = [x.node(), scale.node(), shift.node()];
        match NormBackward.prepare::<C>(guards).compute_bound().stateful() {
            OpsKind::Tracked(mut prep) => {
                let x_state = prep.checkpoint(&x);
                let scale_state = prep.checkpoint(&scale);
                let shift_state = prep.checkpoint(&shift);
                let (y, stats) = group_norm_forward(
                    x.primitive(),
                    scale.primitive(),
                    shift.primitive(),
                    groups,
                    epsilon,
                    silu,
                );
                prep.finish((x_state, scale_state, shift_state, stats, groups, silu), y)
            }
            OpsKind::UnTracked(prep) => prep.finish(
                group_norm_forward(
                    x.primitive(),
                    scale.primitive(),
                    shift.primitive(),
                    groups,
                    epsilon,
                    silu,
                )
                .0,
            ),
        }
    }

    fn cpu_softmax(x: FloatTensor<Self>, scale: f64) -> FloatTensor<Self> {
        let y = softmax_forward(x.primitive(), scale);
        match SoftmaxBackward
            .prepare::<C>([x.node()])
            .compute_bound()
            .stateful()
        {
            // The backward pass reads the output (an Arc of the same buffer).
            OpsKind::Tracked(prep) => prep.finish((y.clone(), scale), y),
            OpsKind::UnTracked(prep) => prep.finish(y),
        }
    }

    // The element-wise training kernels run on plain tensors (gradients, weights, optimizer
    // state); on an autodiff device they act on the values and are not differentiated.

    fn cpu_adamw(
        p: FloatTensor<Self>,
        g: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        lr: f64,
        beta_1: f32,
        beta_2: f32,
        epsilon: f32,
        weight_decay: f32,
        time: usize,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        let (p, m, v) = Flex::cpu_adamw(
            p.into_primitive(),
            g.into_primitive(),
            m.into_primitive(),
            v.into_primitive(),
            lr,
            beta_1,
            beta_2,
            epsilon,
            weight_decay,
            time,
        );
        (
            Self::from_inner(p),
            Self::from_inner(m),
            Self::from_inner(v),
        )
    }

    fn cpu_ema(ema: FloatTensor<Self>, p: FloatTensor<Self>, decay: f64) -> FloatTensor<Self> {
        Self::from_inner(Flex::cpu_ema(
            ema.into_primitive(),
            p.into_primitive(),
            decay,
        ))
    }

    fn cpu_sum_squares(g: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(Flex::cpu_sum_squares(g.into_primitive()))
    }

    fn cpu_scale(g: FloatTensor<Self>, c: FloatTensor<Self>) -> FloatTensor<Self> {
        Self::from_inner(Flex::cpu_scale(g.into_primitive(), c.into_primitive()))
    }
}
