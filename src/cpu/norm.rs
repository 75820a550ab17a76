//! GroupNorm (Wu & He 2018) with a per-image affine and an optional SiLU, forward and backward
//! as one kernel each over NCHW f32 slices: the UNet's `silu(norm(x))`, the scale-shift
//! `silu(norm(x) * (1 + s) + t)` of IDDPM's ResBlock and the plain `norm(x)` of attention are
//! all `act(n * scale[b, c] + shift[b, c])` with `n = (x - mean_g) / sqrt(var_g + eps)` over the
//! group `g` of channel `c` (biased variance, as PyTorch and Burn).
//!
//! Burn's `GroupNorm` followed by `silu` is nine tensor ops forward (each a pass over the
//! activation and an allocation) and their autodiff nodes backward; here the forward reads the
//! input three times (mean, variance, output) and the backward twice, keeping the per-group
//! mean and reciprocal standard deviation from the forward.

use super::math::{silu, silu_grad, simd_fn, sum, sum_map, sum_map2};
use super::par_each;

/// The shapes of one group norm.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormGeometry {
    pub batch: usize,
    pub channels: usize,
    pub groups: usize,
    /// Pixels per channel (`H * W`).
    pub pixels: usize,
}

impl NormGeometry {
    pub fn new(x: [usize; 4], groups: usize) -> Result<NormGeometry, String> {
        let [b, c, h, w] = x;
        if groups == 0 || c % groups != 0 {
            return Err(format!("{c} channels do not split into {groups} groups"));
        }
        Ok(NormGeometry {
            batch: b,
            channels: c,
            groups,
            pixels: h * w,
        })
    }

    fn group_len(&self) -> usize {
        self.channels / self.groups * self.pixels
    }
}

/// The forward pass. `scale` and `shift` are `[B, C]`. Returns the output `[B, C, H, W]` and
/// the statistics `[B, G, 2]` (mean, reciprocal standard deviation) the backward pass reads.
pub fn forward(
    g: &NormGeometry,
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    eps: f64,
    act_silu: bool,
) -> (Vec<f32>, Vec<f32>) {
    let n = g.group_len();
    let bc = g.batch * g.channels;
    assert_eq!(x.len(), bc * g.pixels, "group norm input length");
    assert_eq!(scale.len(), bc, "group norm scale length");
    assert_eq!(shift.len(), bc, "group norm shift length");
    let mut y = vec![0.0f32; x.len()];
    let mut stats = vec![0.0f32; g.batch * g.groups * 2];
    if n == 0 {
        return (y, stats);
    }
    let cg = g.channels / g.groups;
    let hw = g.pixels;
    let jobs: Vec<_> = y
        .chunks_mut(n)
        .zip(stats.chunks_mut(2))
        .enumerate()
        .collect();
    par_each(jobs, |(bg, (yg, st))| {
        let range = bg * n..(bg + 1) * n;
        let (sc, sh) = (&scale[bg * cg..][..cg], &shift[bg * cg..][..cg]);
        forward_group(&x[range], sc, sh, hw, eps, act_silu, yg, st)
    });
    (y, stats)
}

/// Gradients of [`forward`]: `(dx [B, C, H, W], dscale [B, C], dshift [B, C])`.
pub fn backward(
    g: &NormGeometry,
    x: &[f32],
    scale: &[f32],
    shift: &[f32],
    stats: &[f32],
    dy: &[f32],
    act_silu: bool,
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let n = g.group_len();
    let bc = g.batch * g.channels;
    assert_eq!(x.len(), bc * g.pixels, "group norm input length");
    assert_eq!(dy.len(), x.len(), "group norm output-gradient length");
    assert_eq!(
        stats.len(),
        g.batch * g.groups * 2,
        "group norm statistics length"
    );
    let mut dx = vec![0.0f32; x.len()];
    let mut dscale = vec![0.0f32; bc];
    let mut dshift = vec![0.0f32; bc];
    if n == 0 {
        return (dx, dscale, dshift);
    }
    let cg = g.channels / g.groups;
    let hw = g.pixels;
    let jobs: Vec<_> = dx
        .chunks_mut(n)
        .zip(dscale.chunks_mut(cg))
        .zip(dshift.chunks_mut(cg))
        .enumerate()
        .collect();
    par_each(jobs, |(bg, ((dxg, dsc), dsh))| {
        let range = bg * n..(bg + 1) * n;
        let (sc, sh) = (&scale[bg * cg..][..cg], &shift[bg * cg..][..cg]);
        let (mean, rstd) = (stats[2 * bg], stats[2 * bg + 1]);
        backward_group(
            &x[range.clone()],
            &dy[range],
            sc,
            sh,
            [mean, rstd],
            hw,
            act_silu,
            [dxg, dsc, dsh],
        )
    });
    (dx, dscale, dshift)
}

simd_fn! {
    /// One group of [`forward`]: `xg` the group's channels (`scale`, `shift` theirs), output
    /// into `yg` and the group's (mean, 1 / std) into `st`.
    #[allow(clippy::too_many_arguments)]
    fn forward_group(
        xg: &[f32],
        scale: &[f32],
        shift: &[f32],
        hw: usize,
        eps: f64,
        act_silu: bool,
        yg: &mut [f32],
        st: &mut [f32],
    ) => forward_group_body;
}

simd_fn! {
    /// One group of [`backward`]; `out` is the group's `[dx, dscale, dshift]`.
    #[allow(clippy::too_many_arguments)]
    fn backward_group(
        xg: &[f32],
        dyg: &[f32],
        scale: &[f32],
        shift: &[f32],
        stats: [f32; 2],
        hw: usize,
        act_silu: bool,
        out: [&mut [f32]; 3],
    ) => backward_group_body;
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_group_body(
    xg: &[f32],
    scale: &[f32],
    shift: &[f32],
    hw: usize,
    eps: f64,
    act_silu: bool,
    yg: &mut [f32],
    st: &mut [f32],
) {
    let n = xg.len();
    let mean = sum(xg) / n as f64;
    let m32 = mean as f32;
    let var = sum_map(xg, |v| (v - m32) * (v - m32)) / n as f64;
    let rstd = (1.0 / (var + eps).sqrt()) as f32;
    st[0] = m32;
    st[1] = rstd;
    for (c, (&sc, &sh)) in scale.iter().zip(shift).enumerate() {
        // The same f32 arithmetic as the backward pass's recomputation of z.
        let a = rstd * sc;
        let b = sh - m32 * a;
        let xs = &xg[c * hw..][..hw];
        let ys = &mut yg[c * hw..][..hw];
        if act_silu {
            for (o, &v) in ys.iter_mut().zip(xs) {
                *o = silu(v * a + b);
            }
        } else {
            for (o, &v) in ys.iter_mut().zip(xs) {
                *o = v * a + b;
            }
        }
    }
}

#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_group_body(
    xg: &[f32],
    dyg: &[f32],
    scale: &[f32],
    shift: &[f32],
    [mean, rstd]: [f32; 2],
    hw: usize,
    act_silu: bool,
    out: [&mut [f32]; 3],
) {
    let [dxg, dsc, dsh] = out;
    let n = xg.len();
    // Pass 1: dz = dy * act'(z) into dx, and per channel sum(dz), sum(dz * n).
    let (mut s1, mut s2) = (0.0f64, 0.0f64);
    for (c, (&sc, &sh)) in scale.iter().zip(shift).enumerate() {
        let a = rstd * sc;
        let b = sh - mean * a;
        let xs = &xg[c * hw..][..hw];
        let dys = &dyg[c * hw..][..hw];
        let dzs = &mut dxg[c * hw..][..hw];
        if act_silu {
            for ((dz, &v), &d) in dzs.iter_mut().zip(xs).zip(dys) {
                *dz = d * silu_grad(v * a + b);
            }
        } else {
            dzs.copy_from_slice(dys);
        }
        let dz_sum = sum(dzs);
        // sum(dz * n) with n = (x - mean) * rstd.
        let dzn_sum = sum_map2(dzs, xs, |dz, v| dz * (v - mean)) * rstd as f64;
        dsh[c] = dz_sum as f32;
        dsc[c] = dzn_sum as f32;
        s1 += dz_sum * sc as f64;
        s2 += dzn_sum * sc as f64;
    }
    // Pass 2: dx = rstd * (dn - mean(dn) - n * mean(dn * n)), dn = dz * scale.
    let inv_n = 1.0 / n as f64;
    let (m1, m2) = (s1 * inv_n, s2 * inv_n);
    let r = rstd as f64;
    let beta = (-r * r * m2) as f32;
    let gamma = (r * (mean as f64 * r * m2 - m1)) as f32;
    for (c, &sc) in scale.iter().enumerate() {
        let alpha = rstd * sc;
        let xs = &xg[c * hw..][..hw];
        let dzs = &mut dxg[c * hw..][..hw];
        for (dz, &v) in dzs.iter_mut().zip(xs) {
            *dz = *dz * alpha + v * beta + gamma;
        }
    }
}
