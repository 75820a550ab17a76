//! 2-D convolution on the CPU as im2col + GEMM, forward and both gradients (Chellapilla et al.
//! 2006; the lowering cuDNN and oneDNN's gemm path use), on NCHW f32 slices.
//!
//! Per image, with `K = Cin * KH * KW` and `P = OH * OW`, the columns `col` are `[K, P]`
//! (row `(ci * KH + ky) * KW + kx` holds the input pixels that filter tap meets at each output
//! pixel, zero in the padding), and the weights `[Cout, Cin, KH, KW]` read as `[Cout, K]`
//! without any reordering:
//! - forward: `y[Cout, P] = W[Cout, K] · col[K, P]` (+ bias, pre-filled into `y`);
//! - weight gradient: `dW[Cout, K] += dy[Cout, P] · col[K, P]^T`, summed over the images (for
//!   most shapes into the transpose `[K, Cout]`, which the `gemm` crate fills up to twice as
//!   fast, transposed once at the end);
//! - input gradient: `dcol[K, P] = W^T · dy`, scattered back onto the image (col2im);
//! - bias gradient: the sums of `dy` over `P`, per image.
//!
//! A 1x1 convolution with stride 1 and no padding skips the columns: the image plane `[Cin, P]`
//! already is one. Small images (7x7, 14x14: a few dozen output pixels) make GEMMs too thin to
//! run fast, so their images are lowered side by side, `[K, n * P]`, until a product has about
//! [`GEMM_ROWS`] rows. Parallelism is over images or such groups (an image's rows when there are
//! fewer images than threads), each GEMM single-threaded. The gradients are summed over a split
//! of the batch that depends on the shapes alone (at most [`WEIGHT_GRAD_CHUNKS`] chunks), added
//! in order, so they are the same on any number of threads; the forward's split follows the
//! thread count, so its outputs may differ in the last bits between core counts (see
//! [`super`]).

use super::gemm::{Mat, MatMut, gemm};
use super::math::{simd_fn, sum};
use super::{par_each, scratch};

/// The weight gradient's partial sums: at most this many, whatever the thread count (results
/// must not depend on it).
pub const WEIGHT_GRAD_CHUNKS: usize = 8;

/// Rows (images x output pixels) a product should have before images stop being grouped.
pub const GEMM_ROWS: usize = 256;

/// Images whose columns go side by side into one product.
fn images_per_group(p: usize) -> usize {
    GEMM_ROWS.div_ceil(p.max(1))
}

/// The shapes of one convolution (groups 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvGeometry {
    pub batch: usize,
    pub in_channels: usize,
    /// Input height and width.
    pub input: [usize; 2],
    pub out_channels: usize,
    pub kernel: [usize; 2],
    pub stride: [usize; 2],
    pub dilation: [usize; 2],
    /// Zero padding before the first row and column (the padding after them is implied by
    /// `output`).
    pub padding: [usize; 2],
    /// Output height and width.
    pub output: [usize; 2],
}

impl ConvGeometry {
    /// `x` `[B, Cin, H, W]`, `weight` `[Cout, Cin, KH, KW]`, padding `[(top, bottom), (left,
    /// right)]`.
    pub fn new(
        x: [usize; 4],
        weight: [usize; 4],
        stride: [usize; 2],
        dilation: [usize; 2],
        padding: [(usize, usize); 2],
    ) -> Result<ConvGeometry, String> {
        let [b, cin, h, w] = x;
        let [cout, cin_w, kh, kw] = weight;
        if cin != cin_w {
            return Err(format!(
                "the weight [{cout}, {cin_w}, {kh}, {kw}] expects {cin_w} input channels, the input has {cin}"
            ));
        }
        if stride.contains(&0) || dilation.contains(&0) || kh == 0 || kw == 0 {
            return Err(format!(
                "stride {stride:?}, dilation {dilation:?} and kernel [{kh}, {kw}] must be positive"
            ));
        }
        let out = |size: usize, (p0, p1): (usize, usize), k: usize, s: usize, d: usize| {
            let span = d * (k - 1) + 1;
            (size + p0 + p1)
                .checked_sub(span)
                .map(|v| v / s + 1)
                .ok_or_else(|| {
                    format!(
                        "a kernel spanning {span} does not fit a padded size of {}",
                        size + p0 + p1
                    )
                })
        };
        Ok(ConvGeometry {
            batch: b,
            in_channels: cin,
            input: [h, w],
            out_channels: cout,
            kernel: [kh, kw],
            stride,
            dilation,
            padding: [padding[0].0, padding[1].0],
            output: [
                out(h, padding[0], kh, stride[0], dilation[0])?,
                out(w, padding[1], kw, stride[1], dilation[1])?,
            ],
        })
    }

    /// Rows of the column matrix, `Cin * KH * KW`.
    pub fn k(&self) -> usize {
        self.in_channels * self.kernel[0] * self.kernel[1]
    }

    /// Output pixels per image.
    pub fn p(&self) -> usize {
        self.output[0] * self.output[1]
    }

    fn image_in(&self) -> usize {
        self.in_channels * self.input[0] * self.input[1]
    }

    fn image_out(&self) -> usize {
        self.out_channels * self.p()
    }

    /// A 1x1 convolution whose columns are the image itself.
    fn pointwise(&self) -> bool {
        self.kernel == [1, 1]
            && self.stride == [1, 1]
            && self.padding == [0, 0]
            && self.output == self.input
    }

    /// Multiply-accumulates of the forward pass.
    pub fn macs(&self) -> u64 {
        (self.batch * self.out_channels * self.p() * self.k()) as u64
    }
}

/// What is added to the convolution's output.
#[derive(Clone, Copy, Debug)]
pub enum Bias<'a> {
    None,
    /// One value per output channel, `[Cout]`.
    Channel(&'a [f32]),
    /// One value per image and output channel, `[B, Cout]` (a bias plus a per-image term, such
    /// as a ResBlock's timestep embedding).
    Image(&'a [f32]),
}

/// Where an image's columns sit in a column buffer: its row `k` starts at `k * ld + offset`.
#[derive(Clone, Copy, Debug)]
struct Cols {
    ld: usize,
    offset: usize,
}

impl ConvGeometry {
    /// The zero-padded input plane every filter tap reads from: rows `0..hp`, columns `0..wp`
    /// of the input shifted by the leading padding (only as far as some output reads).
    fn padded(&self) -> [usize; 2] {
        let span = |o: usize, s: usize, k: usize, d: usize| (o - 1) * s + (k - 1) * d + 1;
        [
            span(
                self.output[0],
                self.stride[0],
                self.kernel[0],
                self.dilation[0],
            ),
            span(
                self.output[1],
                self.stride[1],
                self.kernel[1],
                self.dilation[1],
            ),
        ]
    }
}

/// Copies image `x` (`[Cin, H, W]`) into `xp`, `[Cin, hp, wp]` with zeros around it.
fn pad_image(g: &ConvGeometry, x: &[f32], xp: &mut [f32]) {
    let [h, w] = g.input;
    let [hp, wp] = g.padded();
    let [pt, pl] = g.padding;
    xp.fill(0.0);
    // Input columns x with 0 <= x + pl < wp land in the padded plane.
    let (x1, w1) = (w.min(wp.saturating_sub(pl)), wp);
    if x1 == 0 {
        return;
    }
    for c in 0..g.in_channels {
        for y in 0..h {
            if y + pt >= hp {
                break;
            }
            let src = &x[(c * h + y) * w..][..x1];
            let dst = &mut xp[(c * hp + y + pt) * w1 + pl..][..x1];
            dst.copy_from_slice(src);
        }
    }
}

/// The columns of output rows `oy0..oy1` of one image `x` (`[Cin, H, W]`) into `col`: row `k`
/// at `col[k * at.ld + at.offset..][..(oy1 - oy0) * OW]`.
fn im2col(g: &ConvGeometry, x: &[f32], oy0: usize, oy1: usize, col: &mut [f32], at: Cols) {
    let [hp, wp] = g.padded();
    scratch::with_padded(g.in_channels * hp * wp, |xp| {
        pad_image(g, x, xp);
        im2col_padded(g, xp, oy0, oy1, col, at);
    })
}

simd_fn! {
    /// [`im2col`] from the padded planes `xp`.
    fn im2col_padded(g: &ConvGeometry, xp: &[f32], oy0: usize, oy1: usize, col: &mut [f32], at: Cols)
        => im2col_body;
}

/// `dst = src` for a short row (7 to a few dozen pixels), as fixed-size vector moves: a plain
/// loop or `copy_from_slice` becomes a `memcpy` call per row, whose overhead was more than
/// the copy itself (a tenth of a sampling step of `tiny` at batch 32 ran in `memmove`).
#[inline(always)]
fn copy_short(dst: &mut [f32], src: &[f32]) {
    #[inline(always)]
    fn chunks<const W: usize>(dst: &mut [f32], src: &[f32]) {
        // Whole chunks, then one chunk ending at the last element (overlapping the previous
        // one; the values are the same).
        let n = dst.len().min(src.len());
        assert!(n >= W);
        let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
        let mut i = 0;
        // SAFETY: every chunk lies inside both slices (`i + W <= n`, `n - W >= 0`), which
        // cannot overlap (one is borrowed mutably).
        unsafe {
            while i + W <= n {
                (d.add(i) as *mut [f32; W])
                    .write_unaligned(s.add(i).cast::<[f32; W]>().read_unaligned());
                i += W;
            }
            if i < n {
                let t = n - W;
                (d.add(t) as *mut [f32; W])
                    .write_unaligned(s.add(t).cast::<[f32; W]>().read_unaligned());
            }
        }
    }
    debug_assert_eq!(dst.len(), src.len());
    match dst.len() {
        n if n >= 8 => chunks::<8>(dst, src),
        n if n >= 4 => chunks::<4>(dst, src),
        _ => {
            for (d, &v) in dst.iter_mut().zip(src) {
                *d = v;
            }
        }
    }
}

#[inline(always)]
fn im2col_body(g: &ConvGeometry, xp: &[f32], oy0: usize, oy1: usize, col: &mut [f32], at: Cols) {
    let [kh, kw] = g.kernel;
    let [hp, wp] = g.padded();
    let ow = g.output[1];
    let pt = (oy1 - oy0) * ow;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    for c in 0..g.in_channels {
        let plane = &xp[c * hp * wp..][..hp * wp];
        for i in 0..kh {
            for j in 0..kw {
                let row = &mut col[((c * kh + i) * kw + j) * at.ld + at.offset..][..pt];
                for (r, oy) in (oy0..oy1).enumerate() {
                    let dst = &mut row[r * ow..][..ow];
                    let src = &plane[(oy * sh + i * dh) * wp + j * dw..];
                    if sw == 1 {
                        copy_short(dst, &src[..ow]);
                    } else {
                        let src = &src[..(ow - 1) * sw + 1];
                        for ox in 0..ow {
                            dst[ox] = src[ox * sw];
                        }
                    }
                }
            }
        }
    }
}

/// The transpose of [`im2col`] over a whole image: adds the columns at `at` in `dcol` onto
/// `dx` (`[Cin, H, W]`, overwritten).
fn col2im(g: &ConvGeometry, dcol: &[f32], at: Cols, dx: &mut [f32]) {
    let [h, w] = g.input;
    let [hp, wp] = g.padded();
    let [pt, pl] = g.padding;
    scratch::with_padded(g.in_channels * hp * wp, |dxp| {
        col2im_padded(g, dcol, at, dxp);
        // Crop: input pixel (y, x) is padded pixel (y + pt, x + pl); pixels no tap reads get 0.
        let x1 = w.min(wp.saturating_sub(pl));
        for c in 0..g.in_channels {
            for y in 0..h {
                let dst = &mut dx[(c * h + y) * w..][..w];
                if y + pt >= hp || x1 == 0 {
                    dst.fill(0.0);
                    continue;
                }
                dst[..x1].copy_from_slice(&dxp[(c * hp + y + pt) * wp + pl..][..x1]);
                dst[x1..].fill(0.0);
            }
        }
    })
}

simd_fn! {
    /// [`col2im`] into the padded planes `dxp` (overwritten).
    fn col2im_padded(g: &ConvGeometry, dcol: &[f32], at: Cols, dxp: &mut [f32]) => col2im_body;
}

#[inline(always)]
fn col2im_body(g: &ConvGeometry, dcol: &[f32], at: Cols, dxp: &mut [f32]) {
    let [kh, kw] = g.kernel;
    let [hp, wp] = g.padded();
    let [oh, ow] = g.output;
    let [sh, sw] = g.stride;
    let [dh, dw] = g.dilation;
    let p = oh * ow;
    dxp.fill(0.0);
    for c in 0..g.in_channels {
        let plane = &mut dxp[c * hp * wp..][..hp * wp];
        for i in 0..kh {
            for j in 0..kw {
                let row = &dcol[((c * kh + i) * kw + j) * at.ld + at.offset..][..p];
                for oy in 0..oh {
                    let src = &row[oy * ow..][..ow];
                    let dst = &mut plane[(oy * sh + i * dh) * wp + j * dw..];
                    if sw == 1 {
                        let dst = &mut dst[..ow];
                        for ox in 0..ow {
                            dst[ox] += src[ox];
                        }
                    } else {
                        let dst = &mut dst[..(ow - 1) * sw + 1];
                        for ox in 0..ow {
                            dst[ox * sw] += src[ox];
                        }
                    }
                }
            }
        }
    }
}

/// The columns of a group of images, side by side: `[K, n * P]` (a pointwise convolution's
/// columns are the image planes themselves).
fn group_columns(g: &ConvGeometry, xs: &[f32], n: usize, col: &mut [f32]) {
    let (p, img_in, ld) = (g.p(), g.image_in(), n * g.p());
    for i in 0..n {
        let xb = &xs[i * img_in..][..img_in];
        if g.pointwise() {
            for c in 0..g.in_channels {
                col[c * ld + i * p..][..p].copy_from_slice(&xb[c * p..][..p]);
            }
        } else {
            im2col(g, xb, 0, g.output[0], col, Cols { ld, offset: i * p });
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: tasks write disjoint elements (documented where it is used).
unsafe impl Send for SharedOut {}
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The bias of image `b`, one value per output channel (None without a bias).
fn image_bias<'a>(bias: &Bias<'a>, b: usize, cout: usize) -> Option<&'a [f32]> {
    match *bias {
        Bias::None => None,
        Bias::Channel(v) => Some(v),
        Bias::Image(v) => Some(&v[b * cout..][..cout]),
    }
}

/// The forward pass: `x` `[B, Cin, H, W]`, `weight` `[Cout, Cin, KH, KW]` -> `[B, Cout, OH, OW]`.
pub fn forward(g: &ConvGeometry, x: &[f32], weight: &[f32], bias: Bias<'_>) -> Vec<f32> {
    let (k, p, img_in, img_out) = (g.k(), g.p(), g.image_in(), g.image_out());
    let cout = g.out_channels;
    assert_eq!(x.len(), g.batch * img_in, "conv input length");
    assert_eq!(weight.len(), cout * k, "conv weight length");
    match bias {
        Bias::Channel(b) => assert_eq!(b.len(), cout, "conv bias length"),
        Bias::Image(b) => assert_eq!(b.len(), g.batch * cout, "conv per-image bias length"),
        Bias::None => {}
    }
    let mut out = vec![0.0f32; g.batch * img_out];
    if out.is_empty() {
        return out;
    }
    let threads = rayon::current_num_threads().max(1);
    let wmat = Mat::col_major(weight, k, cout);
    if g.batch < threads {
        forward_row_tiles(g, x, wmat, bias, &mut out, threads);
        return out;
    }
    // Groups of images, at least one per thread.
    let groups = threads
        .max(g.batch.div_ceil(images_per_group(p)))
        .min(g.batch);
    let per = g.batch.div_ceil(groups);
    let jobs: Vec<_> = out.chunks_mut(per * img_out).enumerate().collect();
    par_each(jobs, |(gi, out_g)| {
        {
            let b0 = gi * per;
            let n = out_g.len() / img_out;
            let xs = &x[b0 * img_in..][..n * img_in];
            if n == 1 {
                // One image: the product writes the output plane directly.
                let accumulate = match image_bias(&bias, b0, cout) {
                    Some(bv) => {
                        for (co, &v) in bv.iter().enumerate() {
                            out_g[co * p..][..p].fill(v);
                        }
                        true
                    }
                    None => false,
                };
                let dst = MatMut::new(out_g, p, cout, 1, p);
                if g.pointwise() {
                    let lhs = Mat::col_major(xs, p, k);
                    gemm(dst, lhs, wmat, accumulate, 1);
                } else {
                    scratch::with(k * p, |col| {
                        im2col(g, xs, 0, g.output[0], col, Cols { ld: p, offset: 0 });
                        let lhs = Mat::col_major(col, p, k);
                        gemm(dst, lhs, wmat, accumulate, 1);
                    });
                }
                return;
            }
            let ld = n * p;
            scratch::with2(k * ld, cout * ld, |col, ys| {
                group_columns(g, xs, n, col);
                let mut accumulate = false;
                for i in 0..n {
                    if let Some(bv) = image_bias(&bias, b0 + i, cout) {
                        for (co, &v) in bv.iter().enumerate() {
                            ys[co * ld + i * p..][..p].fill(v);
                        }
                        accumulate = true;
                    }
                }
                let lhs = Mat::col_major(col, ld, k);
                gemm(MatMut::new(ys, ld, cout, 1, ld), lhs, wmat, accumulate, 1);
                for i in 0..n {
                    for co in 0..cout {
                        out_g[i * img_out + co * p..][..p]
                            .copy_from_slice(&ys[co * ld + i * p..][..p]);
                    }
                }
            });
        }
    });
    out
}

/// [`forward`] with fewer images than threads: every image's output rows split into tiles.
fn forward_row_tiles(
    g: &ConvGeometry,
    x: &[f32],
    wmat: Mat<'_>,
    bias: Bias<'_>,
    out: &mut [f32],
    threads: usize,
) {
    let (k, p, img_in, img_out) = (g.k(), g.p(), g.image_in(), g.image_out());
    let (cout, oh, ow) = (g.out_channels, g.output[0], g.output[1]);
    let tiles = (2 * threads).div_ceil(g.batch).min(oh);
    let rows = oh.div_ceil(tiles);
    let tiles = oh.div_ceil(rows);
    let tasks = g.batch * tiles;
    let gemm_threads = if tasks == 1 { threads } else { 1 };
    let len = out.len();
    let shared = SharedOut(out.as_mut_ptr());
    // Every tile pads its image again, in its own task: padding once up front measured 12%
    // slower for batch 1 (a serial pass while the other threads wait, and a fresh buffer).
    par_each((0..tasks).collect(), |t: usize| {
        let (b, tile) = (t / tiles, t % tiles);
        let oy0 = tile * rows;
        let oy1 = (oy0 + rows).min(oh);
        let (p0, pt) = (oy0 * ow, (oy1 - oy0) * ow);
        let base = b * img_out + p0;
        // This task owns out[b * img_out + co * p + p0 + q] for co < Cout, q < pt: the tiles
        // partition the rows of an image and the images partition `out`.
        let accumulate = match image_bias(&bias, b, cout) {
            Some(bv) => {
                for (co, &v) in bv.iter().enumerate() {
                    // SAFETY: the `pt` elements from here are this task's (above).
                    unsafe { std::slice::from_raw_parts_mut(shared.get().add(base + co * p), pt) }
                        .fill(v);
                }
                true
            }
            None => false,
        };
        // SAFETY: as above; the view addresses exactly this task's elements.
        let dst = unsafe { MatMut::from_raw(shared.get().add(base), len - base, pt, cout, 1, p) };
        let xb = &x[b * img_in..][..img_in];
        if g.pointwise() {
            let lhs = Mat {
                data: &xb[p0..],
                rows: pt,
                cols: k,
                rs: 1,
                cs: p,
            };
            gemm(dst, lhs, wmat, accumulate, gemm_threads);
        } else {
            scratch::with(k * pt, |col| {
                im2col(g, xb, oy0, oy1, col, Cols { ld: pt, offset: 0 });
                let lhs = Mat::col_major(col, pt, k);
                gemm(dst, lhs, wmat, accumulate, gemm_threads);
            });
        }
    });
}

/// Gradients of a convolution; each is present when it was asked for.
#[derive(Debug, Default)]
pub struct ConvGrads {
    /// `[B, Cin, H, W]`.
    pub x: Option<Vec<f32>>,
    /// `[Cout, Cin, KH, KW]`.
    pub weight: Option<Vec<f32>>,
    /// The sums of the output gradient over each image's pixels, `[B, Cout]`: the gradient of a
    /// per-image bias (sum over the images for a per-channel one).
    pub bias: Option<Vec<f32>>,
}

/// Which gradients [`backward`] computes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Wanted {
    pub x: bool,
    pub weight: bool,
    pub bias: bool,
}

/// The backward pass: `dy` `[B, Cout, OH, OW]` -> the gradients `wanted` of input, weight and
/// bias.
pub fn backward(
    g: &ConvGeometry,
    x: &[f32],
    weight: &[f32],
    dy: &[f32],
    wanted: Wanted,
) -> ConvGrads {
    let (k, p, img_in, img_out) = (g.k(), g.p(), g.image_in(), g.image_out());
    let cout = g.out_channels;
    assert_eq!(x.len(), g.batch * img_in, "conv input length");
    assert_eq!(weight.len(), cout * k, "conv weight length");
    assert_eq!(dy.len(), g.batch * img_out, "conv output-gradient length");
    let mut grads = ConvGrads {
        x: wanted.x.then(|| vec![0.0; g.batch * img_in]),
        weight: None,
        bias: wanted.bias.then(|| vec![0.0; g.batch * cout]),
    };
    if g.batch == 0 {
        grads.weight = wanted.weight.then(|| vec![0.0; cout * k]);
        return grads;
    }
    // Chunks of images, from the shapes alone: at most WEIGHT_GRAD_CHUNKS, each at least a
    // product's worth of small images, balanced.
    let per = g
        .batch
        .div_ceil(WEIGHT_GRAD_CHUNKS)
        .max(images_per_group(p))
        .min(g.batch);
    let chunks = g.batch.div_ceil(per);
    let per = g.batch.div_ceil(chunks);
    let chunks = g.batch.div_ceil(per);
    // Within a chunk, images go through the products in groups of at most this many.
    let group = per.min(images_per_group(p));
    // The weight gradient's product runs about twice as fast into a column-major result
    // (`[K, Cout]`) once it sums over many pixels; transposing it back costs a pass over the
    // weights, so a large weight summed over few pixels stays row-major.
    let transposed = group * p >= 512 || cout * k <= 1 << 18;
    let mut partials: Vec<Vec<f32>> = if wanted.weight {
        vec![vec![0.0; cout * k]; chunks]
    } else {
        Vec::new()
    };
    let threads = rayon::current_num_threads().max(1);
    let gemm_threads = if chunks == 1 { threads } else { 1 };

    type Job<'a> = (
        usize,
        Option<&'a mut [f32]>,
        Option<&'a mut [f32]>,
        Option<&'a mut [f32]>,
    );
    let mut jobs: Vec<Job<'_>> = (0..chunks).map(|c| (c, None, None, None)).collect();
    if let Some(dx) = grads.x.as_mut() {
        for (j, s) in jobs.iter_mut().zip(dx.chunks_mut(per * img_in)) {
            j.1 = Some(s);
        }
    }
    for (j, s) in jobs.iter_mut().zip(partials.iter_mut()) {
        j.2 = Some(s.as_mut_slice());
    }
    if let Some(db) = grads.bias.as_mut() {
        for (j, s) in jobs.iter_mut().zip(db.chunks_mut(per * cout)) {
            j.3 = Some(s);
        }
    }
    par_each(jobs, |(c, mut dx_c, mut dw_c, mut db_c)| {
        let b0 = c * per;
        let n_images = (per).min(g.batch - b0);
        let mut first = true;
        for s0 in (0..n_images).step_by(group) {
            let n = group.min(n_images - s0);
            let b = b0 + s0;
            let xs = &x[b * img_in..][..n * img_in];
            let dys = &dy[b * img_out..][..n * img_out];
            if let Some(db) = db_c.as_deref_mut() {
                for (i, d) in db[s0 * cout..][..n * cout].iter_mut().enumerate() {
                    *d = sum(&dys[i * p..][..p]) as f32;
                }
            }
            let dx = dx_c
                .as_deref_mut()
                .map(|d| &mut d[s0 * img_in..][..n * img_in]);
            let dw = dw_c.as_deref_mut();
            if n == 1 {
                scratch::with2(
                    if dw.is_some() && !g.pointwise() {
                        k * p
                    } else {
                        0
                    },
                    if dx.is_some() && !g.pointwise() {
                        k * p
                    } else {
                        0
                    },
                    |col, dcol| {
                        if let Some(dw) = dw {
                            weight_grad_image(
                                g,
                                xs,
                                dys,
                                col,
                                dw,
                                transposed,
                                !first,
                                gemm_threads,
                            );
                        }
                        if let Some(dx) = dx {
                            input_grad_image(g, weight, dys, dcol, dx, gemm_threads);
                        }
                    },
                );
            } else {
                backward_group(
                    g,
                    weight,
                    xs,
                    dys,
                    n,
                    dw,
                    transposed,
                    !first,
                    dx,
                    gemm_threads,
                );
            }
            first = false;
        }
    });
    if wanted.weight {
        grads.weight = Some(if transposed {
            sum_transposed(&partials, k, cout)
        } else {
            let mut parts = partials.into_iter();
            let mut dw = parts.next().expect("at least one chunk");
            for part in parts {
                for (d, v) in dw.iter_mut().zip(&part) {
                    *d += v;
                }
            }
            dw
        });
    }
    grads
}

/// `sum(parts)` (each `[rows, cols]`, added in order) transposed to `[cols, rows]`, through a
/// tile in cache, the output's row blocks in parallel.
fn sum_transposed(parts: &[Vec<f32>], rows: usize, cols: usize) -> Vec<f32> {
    const TILE: usize = 32;
    let mut out = vec![0.0f32; rows * cols];
    if out.is_empty() {
        return out;
    }
    let jobs: Vec<_> = out.chunks_mut(TILE * rows).enumerate().collect();
    par_each(jobs, |(cb, block)| {
        let c0 = cb * TILE;
        let nc = block.len() / rows;
        let mut tile = [[0.0f32; TILE]; TILE];
        for r0 in (0..rows).step_by(TILE) {
            let nr = TILE.min(rows - r0);
            for (r, row) in tile.iter_mut().enumerate().take(nr) {
                for (i, part) in parts.iter().enumerate() {
                    let src = &part[(r0 + r) * cols + c0..][..nc];
                    for (d, &v) in row.iter_mut().zip(src) {
                        *d = if i == 0 { v } else { *d + v };
                    }
                }
            }
            for c in 0..nc {
                for (r, d) in block[c * rows + r0..][..nr].iter_mut().enumerate() {
                    *d = tile[r][c];
                }
            }
        }
    });
    out
}

/// The weight gradient's partial sum as a GEMM result: `[Cout, K]`, or its transpose.
fn weight_grad_dst(dw: &mut [f32], cout: usize, k: usize, transposed: bool) -> MatMut<'_> {
    if transposed {
        MatMut::new(dw, cout, k, 1, cout)
    } else {
        MatMut::new(dw, cout, k, k, 1)
    }
}

/// `dw (+)= dy_b · col_b^T` for one image, `dw` `[Cout, K]` or transposed (kept out of line so
/// that profiles name it).
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn weight_grad_image(
    g: &ConvGeometry,
    xb: &[f32],
    dyb: &[f32],
    col: &mut [f32],
    dw: &mut [f32],
    transposed: bool,
    accumulate: bool,
    threads: usize,
) {
    let (k, p, cout) = (g.k(), g.p(), g.out_channels);
    let rhs = if g.pointwise() {
        Mat::col_major(xb, p, k)
    } else {
        im2col(g, xb, 0, g.output[0], col, Cols { ld: p, offset: 0 });
        Mat::col_major(col, p, k)
    };
    let lhs = Mat::row_major(dyb, cout, p);
    gemm(
        weight_grad_dst(dw, cout, k, transposed),
        lhs,
        rhs,
        accumulate,
        threads,
    );
}

/// `dx_b = col2im(W^T · dy_b)` for one image (out of line, as above).
#[inline(never)]
fn input_grad_image(
    g: &ConvGeometry,
    weight: &[f32],
    dyb: &[f32],
    dcol: &mut [f32],
    dxb: &mut [f32],
    threads: usize,
) {
    let (k, p, cout) = (g.k(), g.p(), g.out_channels);
    let lhs = Mat::col_major(dyb, p, cout);
    let rhs = Mat::row_major(weight, cout, k);
    if g.pointwise() {
        gemm(MatMut::new(dxb, p, k, 1, p), lhs, rhs, false, threads);
    } else {
        gemm(MatMut::new(dcol, p, k, 1, p), lhs, rhs, false, threads);
        col2im(g, dcol, Cols { ld: p, offset: 0 }, dxb);
    }
}

/// Both gradients for a group of `n` small images side by side (out of line, as above): the
/// output gradient gathered to `[Cout, n * P]`, then one product per gradient.
#[inline(never)]
#[allow(clippy::too_many_arguments)]
fn backward_group(
    g: &ConvGeometry,
    weight: &[f32],
    xs: &[f32],
    dys: &[f32],
    n: usize,
    dw: Option<&mut [f32]>,
    transposed: bool,
    accumulate: bool,
    dx: Option<&mut [f32]>,
    threads: usize,
) {
    let (k, p, cout, img_in) = (g.k(), g.p(), g.out_channels, g.image_in());
    let ld = n * p;
    let (want_w, want_x) = (dw.is_some(), dx.is_some());
    scratch::with3(
        cout * ld,
        if want_w { k * ld } else { 0 },
        if want_x { k * ld } else { 0 },
        |dyg, col, dcol| {
            for i in 0..n {
                for co in 0..cout {
                    dyg[co * ld + i * p..][..p].copy_from_slice(&dys[(i * cout + co) * p..][..p]);
                }
            }
            if let Some(dw) = dw {
                group_columns(g, xs, n, col);
                let lhs = Mat::row_major(dyg, cout, ld);
                let rhs = Mat::col_major(col, ld, k);
                gemm(
                    weight_grad_dst(dw, cout, k, transposed),
                    lhs,
                    rhs,
                    accumulate,
                    threads,
                );
            }
            if let Some(dx) = dx {
                let lhs = Mat::col_major(dyg, ld, cout);
                let rhs = Mat::row_major(weight, cout, k);
                gemm(MatMut::new(dcol, ld, k, 1, ld), lhs, rhs, false, threads);
                for i in 0..n {
                    let dxb = &mut dx[i * img_in..][..img_in];
                    if g.pointwise() {
                        for c in 0..g.in_channels {
                            dxb[c * p..][..p].copy_from_slice(&dcol[c * ld + i * p..][..p]);
                        }
                    } else {
                        col2im(g, dcol, Cols { ld, offset: i * p }, dxb);
                    }
                }
            }
        },
    );
}
