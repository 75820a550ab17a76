//! Is a lowering without the column matrix faster than im2col + GEMM on the CPU? This times,
//! on one thread and one image, the three products of a 3x3 convolution (stride 1, padding 1)
//! two ways on the same `gemm` crate `src/cpu/conv.rs` uses:
//!
//! - **im2col**: the columns `[9 Cin, P]` written out, then one product (what `cpu::conv` does);
//! - **shifted**: no columns: nine products with `K = Cin` (forward) or `K = Cout` (data
//!   gradient), one per filter tap, each reading the zero-padded image at the tap's offset
//!   (the output is computed on the padded width and cropped), the "kn2row" / shifted-GEMM
//!   lowering that an implicit GEMM generalises.
//!
//! ```sh
//! cargo run --release --example conv_lowering      # one thread
//! cargo run --release --example conv_lowering 2    # two threads, one copy each
//! ```
//!
//! Each line is one shape of the `ddpm-cifar10` or `tiny` UNets; times are the fastest of seven
//! rounds, GFLOP/s counts 2 FLOPs per multiply-accumulate of the convolution itself (so the
//! shifted lowering's wasted columns count against it). Results and their reading are in
//! `examples/bench/results/cpu-2026-12/conv-lowering.md`.

use std::time::Instant;

/// A view of a strided matrix: (pointer, column stride, row stride).
type View = (*const f32, isize, isize);

/// `dst (+)= lhs * rhs`, `m x n` with inner size `k`, single-threaded.
///
/// # Safety
/// Every view must address only elements inside its buffer; `dst` aliases neither input.
unsafe fn product(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, isize, isize),
    accumulate: bool,
    lhs: View,
    rhs: View,
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.0,
            dst.1,
            dst.2,
            accumulate,
            lhs.0,
            lhs.1,
            lhs.2,
            rhs.0,
            rhs.1,
            rhs.2,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Seconds per call: the fastest of seven rounds of five calls.
fn time(mut f: impl FnMut()) -> f64 {
    f();
    (0..7)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..5 {
                f();
            }
            t0.elapsed().as_secs_f64() / 5.0
        })
        .fold(f64::INFINITY, f64::min)
}

fn fill(n: usize, m: usize) -> Vec<f32> {
    (0..n).map(|i| (i % m) as f32 * 0.1).collect()
}

fn main() {
    // The ceiling: a large square product on one thread.
    let n = 1024;
    let (a, b, mut c) = (fill(n * n, 7), fill(n * n, 5), vec![0.0f32; n * n]);
    // SAFETY: three n x n column-major matrices in their own buffers.
    let t = time(|| unsafe {
        product(
            (n, n, n),
            (c.as_mut_ptr(), n as isize, 1),
            false,
            (a.as_ptr(), n as isize, 1),
            (b.as_ptr(), n as isize, 1),
        )
    });
    println!(
        "one-thread ceiling, a {n}^3 product: {:.0} GF",
        2.0 * (n * n * n) as f64 / t / 1e9
    );
    println!(
        "{:>14} | {:>17} {:>17} | {:>17} {:>17} | {:>17} {:>17}",
        "3x3 conv",
        "fwd im2col",
        "fwd shifted",
        "dx im2col",
        "dx shifted",
        "dW im2col",
        "dW shifted"
    );
    let shapes = [
        (128, 128, 32),
        (256, 256, 16),
        (384, 128, 32),
        (256, 256, 8),
        (48, 48, 28),
        (24, 24, 28),
        (48, 48, 14),
        (48, 48, 7),
    ];
    // With an argument `2`, a second thread runs the same work beside the first (as the two
    // cores of a training step do), so both compete for the shared cache and memory.
    let copies: usize = std::env::args()
        .nth(1)
        .map_or(1, |a| a.parse().expect("the number of copies"));
    for shape in shapes {
        let lines: Vec<String> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..copies)
                .map(|_| scope.spawn(move || measure(shape)))
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        println!("{}", lines[0]);
    }
}

/// The six timings of one shape, as a table line.
fn measure((cin, cout, s): (usize, usize, usize)) -> String {
    {
        let (h, w) = (s, s);
        // The padded plane, plus the two columns the last tap's wasted outputs read past it.
        let (hp, wp) = (h + 2, w + 2);
        let plane = hp * wp;
        let (k, p, wide) = (9 * cin, h * w, h * wp);
        let x = fill(cin * p, 11);
        let dy = fill(cout * p, 17);
        let wt = fill(cout * k, 13);
        let mut xp = vec![0.0f32; cin * plane + 2];
        let mut col = vec![0.0f32; k * p];
        let mut y = vec![0.0f32; cout * p];
        let mut y_wide = vec![0.0f32; cout * wide];
        let mut dy_wide = vec![0.0f32; cout * wide];
        let mut dx = vec![0.0f32; cin * p];
        let mut dw = vec![0.0f32; cout * k];

        let pad = |xp: &mut [f32]| {
            for c in 0..cin {
                for r in 0..h {
                    xp[(c * hp + r + 1) * wp + 1..][..w]
                        .copy_from_slice(&x[(c * h + r) * w..][..w]);
                }
            }
        };
        let im2col = |xp: &[f32], col: &mut [f32]| {
            for c in 0..cin {
                for t in 0..9 {
                    let row = &mut col[(c * 9 + t) * p..][..p];
                    for oy in 0..h {
                        row[oy * w..][..w]
                            .copy_from_slice(&xp[(c * hp + oy + t / 3) * wp + t % 3..][..w]);
                    }
                }
            }
        };
        let widen = |dy_wide: &mut [f32]| {
            for co in 0..cout {
                for r in 0..h {
                    dy_wide[co * wide + r * wp..][..w]
                        .copy_from_slice(&dy[(co * h + r) * w..][..w]);
                }
            }
        };
        let crop = |xp: &[f32], dx: &mut [f32]| {
            for c in 0..cin {
                for r in 0..h {
                    dx[(c * h + r) * w..][..w]
                        .copy_from_slice(&xp[(c * hp + r + 1) * wp + 1..][..w]);
                }
            }
        };
        let (pi, ki, plane_i, wide_i) = (p as isize, k as isize, plane as isize, wide as isize);

        // Forward. SAFETY (all products below): the views stay inside their buffers (the
        // padded plane has two spare elements for the last tap's wasted columns).
        let fwd_col = time(|| {
            pad(&mut xp);
            im2col(&xp, &mut col);
            unsafe {
                product(
                    (p, cout, k),
                    (y.as_mut_ptr(), pi, 1),
                    false,
                    (col.as_ptr(), pi, 1),
                    (wt.as_ptr(), ki, 1),
                )
            }
        });
        let fwd_shift = time(|| {
            pad(&mut xp);
            for t in 0..9 {
                let at = t / 3 * wp + t % 3;
                unsafe {
                    product(
                        (wide, cout, cin),
                        (y_wide.as_mut_ptr(), wide_i, 1),
                        t > 0,
                        (xp.as_ptr().add(at), plane_i, 1),
                        (wt.as_ptr().add(t), ki, 9),
                    )
                }
            }
            for co in 0..cout {
                for r in 0..h {
                    y[(co * h + r) * w..][..w].copy_from_slice(&y_wide[co * wide + r * wp..][..w]);
                }
            }
        });

        // Data gradient.
        let dx_col = time(|| {
            unsafe {
                product(
                    (p, k, cout),
                    (col.as_mut_ptr(), pi, 1),
                    false,
                    (dy.as_ptr(), pi, 1),
                    (wt.as_ptr(), 1, ki),
                )
            }
            xp.fill(0.0);
            for c in 0..cin {
                for t in 0..9 {
                    let row = &col[(c * 9 + t) * p..][..p];
                    for oy in 0..h {
                        let d = &mut xp[(c * hp + oy + t / 3) * wp + t % 3..][..w];
                        for (a, b) in d.iter_mut().zip(&row[oy * w..][..w]) {
                            *a += b;
                        }
                    }
                }
            }
            crop(&xp, &mut dx);
        });
        let dx_shift = time(|| {
            widen(&mut dy_wide);
            xp.fill(0.0);
            for t in 0..9 {
                let at = t / 3 * wp + t % 3;
                unsafe {
                    product(
                        (wide, cin, cout),
                        (xp.as_mut_ptr().add(at), plane_i, 1),
                        true,
                        (dy_wide.as_ptr(), wide_i, 1),
                        (wt.as_ptr().add(t), 9, ki),
                    )
                }
            }
            crop(&xp, &mut dx);
        });

        // Weight gradient, into its transpose [K, Cout] as cpu::conv sums it.
        let dw_col = time(|| {
            pad(&mut xp);
            im2col(&xp, &mut col);
            unsafe {
                product(
                    (cout, k, p),
                    (dw.as_mut_ptr(), cout as isize, 1),
                    false,
                    (dy.as_ptr(), 1, pi),
                    (col.as_ptr(), pi, 1),
                )
            }
        });
        let dw_shift = time(|| {
            xp.fill(0.0);
            pad(&mut xp);
            widen(&mut dy_wide);
            for t in 0..9 {
                let at = t / 3 * wp + t % 3;
                unsafe {
                    product(
                        (cout, cin, wide),
                        (dw.as_mut_ptr().add(t * cout), (9 * cout) as isize, 1),
                        false,
                        (dy_wide.as_ptr(), 1, wide_i),
                        (xp.as_ptr().add(at), plane_i, 1),
                    )
                }
            }
        });

        let flops = 2.0 * (cout * k * p) as f64;
        let cell = |t: f64| format!("{:7.3} ms {:4.0} GF", t * 1e3, flops / t / 1e9);
        format!(
            "{:>14} | {:>17} {:>17} | {:>17} {:>17} | {:>17} {:>17}",
            format!("{cin}>{cout} @{s}"),
            cell(fwd_col),
            cell(fwd_shift),
            cell(dx_col),
            cell(dx_shift),
            cell(dw_col),
            cell(dw_shift)
        )
    }
}
