//! `softmax(scale * x)` over the last dimension, forward and backward: the attention weights of
//! the UNet's self-attention (`scale = 1 / sqrt(head width)`).
//!
//! Burn's `softmax` is four tensor ops (max, subtract, exp, divide by the sum), its `exp` a
//! scalar libm call per element; on the Fashion-MNIST evolution genome (attention over 196
//! tokens) that `exp` was 6.7% of a training step. Here a row is one pass for its max, one for
//! the exponentials and their sum, one to normalise, with the vectorised [`super::math::exp`].

use super::math::{exp, simd_fn, sum, sum_map2};
use super::par_each;

/// Rows per parallel task: at least this many elements.
const TASK: usize = 1 << 15;

/// `y = softmax(scale * x)` over rows of `n` elements.
pub fn forward(x: &[f32], n: usize, scale: f32) -> Vec<f32> {
    assert!(
        n > 0 && x.len().is_multiple_of(n),
        "softmax: {} elements are not rows of {n}",
        x.len()
    );
    let mut y = vec![0.0f32; x.len()];
    let rows = (TASK / n).max(1);
    let jobs: Vec<_> = y.chunks_mut(rows * n).zip(x.chunks(rows * n)).collect();
    par_each(jobs, |(y, x)| forward_rows(x, y, n, scale));
    y
}

simd_fn! {
    fn forward_rows(x: &[f32], y: &mut [f32], n: usize, scale: f32) => forward_body;
}

#[inline(always)]
fn forward_body(x: &[f32], y: &mut [f32], n: usize, scale: f32) {
    for (xr, yr) in x.chunks_exact(n).zip(y.chunks_exact_mut(n)) {
        // The maximum in 16 lanes (a single running maximum would not vectorise).
        let mut lanes = [f32::NEG_INFINITY; 16];
        let chunks = xr.chunks_exact(16);
        let rest = chunks.remainder();
        for c in chunks {
            for (l, &v) in lanes.iter_mut().zip(c) {
                *l = l.max(v * scale);
            }
        }
        let m = rest.iter().fold(
            lanes.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)),
            |a, &v| a.max(v * scale),
        );
        for (o, &v) in yr.iter_mut().zip(xr) {
            *o = exp(v * scale - m);
        }
        let inv = (1.0 / sum(yr)) as f32;
        for o in yr.iter_mut() {
            *o *= inv;
        }
    }
}

/// `dx = scale * y * (dy - sum(dy * y))` per row, from the forward output `y`.
pub fn backward(y: &[f32], dy: &[f32], n: usize, scale: f32) -> Vec<f32> {
    assert_eq!(
        y.len(),
        dy.len(),
        "softmax: output and gradient lengths differ"
    );
    let mut dx = vec![0.0f32; y.len()];
    let rows = (TASK / n).max(1);
    let jobs: Vec<_> = dx
        .chunks_mut(rows * n)
        .zip(y.chunks(rows * n).zip(dy.chunks(rows * n)))
        .collect();
    par_each(jobs, |(dx, (y, dy))| backward_rows(y, dy, dx, n, scale));
    dx
}

simd_fn! {
    fn backward_rows(y: &[f32], dy: &[f32], dx: &mut [f32], n: usize, scale: f32)
        => backward_body;
}

#[inline(always)]
fn backward_body(y: &[f32], dy: &[f32], dx: &mut [f32], n: usize, scale: f32) {
    for ((yr, gr), dr) in y
        .chunks_exact(n)
        .zip(dy.chunks_exact(n))
        .zip(dx.chunks_exact_mut(n))
    {
        let dot = sum_map2(yr, gr, |a, b| a * b) as f32;
        for ((d, &a), &b) in dr.iter_mut().zip(yr).zip(gr) {
            *d = scale * a * (b - dot);
        }
    }
}
