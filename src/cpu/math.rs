//! Element-wise math written so that the compiler vectorises it: `exp` by range reduction and a
//! polynomial (Cephes' `expf`, within 2 ulp on the range used here), SiLU and its derivative,
//! and sums over long rows kept in f32 lanes and folded into f64 per block (order-fixed, so the
//! same on every run). [`simd_fn!`] compiles a loop for the widest vector unit the CPU has.
//!
//! libm's `expf` is a scalar call per element: in a profile of a training step on `flex` it was
//! 6.5% of all time, through Burn's `sigmoid`.

/// The vector units [`simd_fn!`] compiles for, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimdLevel {
    /// AVX-512 (F and VL).
    Avx512,
    /// AVX2.
    Avx2,
    /// The build's baseline: SSE2 on x86-64, SIMD128 in the browser build, NEON on aarch64.
    Baseline,
}

/// The best [`SimdLevel`] this CPU runs (detected once).
pub fn simd_level() -> SimdLevel {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static LEVEL: OnceLock<SimdLevel> = OnceLock::new();
        *LEVEL.get_or_init(|| {
            if std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512vl")
            {
                SimdLevel::Avx512
            } else if std::arch::is_x86_feature_detected!("avx2") {
                SimdLevel::Avx2
            } else {
                SimdLevel::Baseline
            }
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    SimdLevel::Baseline
}

/// `fn name(args) -> R => body_fn;` defines `name`, which runs `body_fn` (an
/// `#[inline(always)]` function with the same arguments) compiled for the widest vector unit
/// of [`simd_level`]. Rounding is the same on every path: the compiler vectorises the same
/// IEEE operations and introduces no fused multiply-adds.
macro_rules! simd_fn {
    ($(#[$m:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? => $imp:path;) => {
        $(#[$m])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v4($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn v3($($arg: $ty),*) $(-> $ret)? {
                    $imp($($arg),*)
                }
                match $crate::cpu::math::simd_level() {
                    // SAFETY: the CPU has the features `v4` / `v3` are compiled for.
                    $crate::cpu::math::SimdLevel::Avx512 => return unsafe { v4($($arg),*) },
                    $crate::cpu::math::SimdLevel::Avx2 => return unsafe { v3($($arg),*) },
                    $crate::cpu::math::SimdLevel::Baseline => {}
                }
            }
            $imp($($arg),*)
        }
    };
}
pub(crate) use simd_fn;

const LOG2_E: f32 = std::f32::consts::LOG2_E;
// ln 2 split in two so that `n * LN2_HI` is exact for the |n| <= 127 used here.
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;

/// `e^x` for finite `x`, clamped to the range where the result is a normal f32 (so `exp(-100)`
/// is about 1e-38 rather than 0, and `exp(100)` about 2.8e38 rather than infinity). NaN stays
/// NaN.
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    let xc = x.clamp(-87.0, 88.0);
    // Round to nearest by the 1.5 * 2^23 trick (vectorises, unlike `round`); the integer is
    // then in t's low mantissa bits (a float-to-int conversion would not vectorise as well).
    let t = xc * LOG2_E + 12_582_912.0;
    let n = t - 12_582_912.0;
    let ni = (t.to_bits() as i32).wrapping_sub(0x4B40_0000);
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_1e-4_f32;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let y = p * r * r + r + 1.0;
    let scale = f32::from_bits(((ni + 127) as u32) << 23);
    let v = y * scale;
    // NaN inputs: clamp would turn them into a bound.
    if x.is_nan() { x } else { v }
}

/// The logistic sigmoid.
#[inline(always)]
pub fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// `x * sigmoid(x)`.
#[inline(always)]
pub fn silu(x: f32) -> f32 {
    x * sigmoid(x)
}

/// `d silu(x) / dx = s (1 + x (1 - s))` with `s = sigmoid(x)`.
#[inline(always)]
pub fn silu_grad(x: f32) -> f32 {
    let s = sigmoid(x);
    s * (1.0 + x * (1.0 - s))
}

const LANES: usize = 16;
const BLOCK: usize = 512;

/// `sum(f(a[i], b[i]))` over two slices of equal length: 16 f32 lanes per block of 512
/// elements, block sums in f64. The order of the additions is fixed by the length alone.
#[inline(always)]
pub fn sum_map2(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32) -> f64 {
    assert_eq!(a.len(), b.len(), "sum_map2: lengths differ");
    let mut total = 0.0f64;
    for (ab, bb) in a.chunks(BLOCK).zip(b.chunks(BLOCK)) {
        let mut lanes = [0.0f32; LANES];
        let (ac, bc) = (ab.chunks_exact(LANES), bb.chunks_exact(LANES));
        let (ar, br) = (ac.remainder(), bc.remainder());
        for (x, y) in ac.zip(bc) {
            for l in 0..LANES {
                lanes[l] += f(x[l], y[l]);
            }
        }
        let mut block: f64 = lanes.iter().map(|&v| v as f64).sum();
        for (&x, &y) in ar.iter().zip(br) {
            block += f(x, y) as f64;
        }
        total += block;
    }
    total
}

/// `sum(f(a[i]))`.
#[inline(always)]
pub fn sum_map(a: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    sum_map2(a, a, |x, _| f(x))
}

/// `sum(a)`.
#[inline(always)]
pub fn sum(a: &[f32]) -> f64 {
    sum_map(a, |x| x)
}
