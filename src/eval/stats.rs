//! Feature statistics, Fréchet distance and KID, in f64 on the host.
//!
//! - Mean and unbiased covariance (N - 1), accumulated batch by batch with a shift (the first
//!   batch's mean) so that no image or feature set needs to be held to get them.
//! - Fréchet distance `|mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2)`, with
//!   `tr sqrt(S1 S2) = sum sqrt(max(lambda, 0))` over the eigenvalues of the symmetric
//!   `R S2 R`, `R = sqrt(S1)`, both from faer's symmetric eigendecomposition. Matches scipy's
//!   `sqrtm` route of pytorch-fid to about 1e-9 (see the tests), where any f32 route does not.
//! - KID: unbiased MMD^2 with the cubic kernel `(x.y / d + 1)^3`, averaged over random subsets.

use faer::{Mat, Side};
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

/// Fewer samples than this leave a 2048-d covariance rank-deficient (pytorch-fid's warning).
pub const FULL_RANK_SAMPLES: usize = 2048;

#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("feature dimensions differ: {0} vs {1}")]
    Dim(usize, usize),
    #[error("at least 2 samples are needed for a covariance, got {0}")]
    TooFew(usize),
    #[error("statistics contain non-finite values ({0})")]
    NonFinite(&'static str),
    #[error("eigendecomposition failed: {0}")]
    Eigen(String),
    #[error("KID needs at least 2 samples on each side, got {0} and {1}")]
    KidTooFew(usize, usize),
}

/// Mean and unbiased covariance of `n` feature vectors of length `dim`.
#[derive(Debug, Clone, PartialEq)]
pub struct FeatureStats {
    pub n: usize,
    pub dim: usize,
    pub mu: Vec<f64>,
    /// Row-major `dim x dim`.
    pub sigma: Vec<f64>,
}

impl FeatureStats {
    fn sigma_mat(&self) -> Mat<f64> {
        Mat::from_fn(self.dim, self.dim, |i, j| self.sigma[i * self.dim + j])
    }

    /// Statistics of all rows of `features` (`n x dim`, row-major).
    pub fn of(features: &[f32], dim: usize) -> Result<Self, StatsError> {
        let mut acc = StatsAccumulator::new(dim);
        acc.push(features);
        acc.finish()
    }
}

/// Streaming mean/covariance: push rows in batches, then [`StatsAccumulator::finish`].
pub struct StatsAccumulator {
    dim: usize,
    n: usize,
    shift: Option<Vec<f64>>,
    sum: Vec<f64>,
    scatter: Mat<f64>,
}

impl StatsAccumulator {
    pub fn new(dim: usize) -> Self {
        StatsAccumulator {
            dim,
            n: 0,
            shift: None,
            sum: vec![0.0; dim],
            scatter: Mat::zeros(dim, dim),
        }
    }

    pub fn count(&self) -> usize {
        self.n
    }

    /// Add rows (`k x dim`, row-major).
    pub fn push(&mut self, rows: &[f32]) {
        let d = self.dim;
        assert_eq!(
            rows.len() % d,
            0,
            "rows must be a multiple of the dimension"
        );
        let k = rows.len() / d;
        if k == 0 {
            return;
        }
        let shift = self.shift.get_or_insert_with(|| {
            let mut m = vec![0.0; d];
            for r in rows.chunks_exact(d) {
                for (a, &x) in m.iter_mut().zip(r) {
                    *a += x as f64;
                }
            }
            m.iter_mut().for_each(|a| *a /= k as f64);
            m
        });
        let centred = Mat::from_fn(k, d, |i, j| rows[i * d + j] as f64 - shift[j]);
        for i in 0..k {
            for j in 0..d {
                self.sum[j] += centred[(i, j)];
            }
        }
        self.scatter += centred.transpose() * &centred;
        self.n += k;
    }

    /// Mean and unbiased covariance.
    pub fn finish(&self) -> Result<FeatureStats, StatsError> {
        let (n, d) = (self.n, self.dim);
        if n < 2 {
            return Err(StatsError::TooFew(n));
        }
        let shift = self.shift.as_ref().expect("n >= 2");
        let mean_c: Vec<f64> = self.sum.iter().map(|s| s / n as f64).collect();
        let mu = mean_c.iter().zip(shift).map(|(m, s)| m + s).collect();
        let mut sigma = vec![0.0; d * d];
        for i in 0..d {
            for j in 0..d {
                sigma[i * d + j] =
                    (self.scatter[(i, j)] - n as f64 * mean_c[i] * mean_c[j]) / (n as f64 - 1.0);
            }
        }
        Ok(FeatureStats {
            n,
            dim: d,
            mu,
            sigma,
        })
    }
}

/// A Fréchet distance and how it was obtained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Frechet {
    pub value: f64,
    pub mean_term: f64,
    pub trace_term: f64,
    /// Diagonal offset added to both covariances (pytorch-fid's fallback), 0 when none.
    pub eps: f64,
    pub warnings: Vec<String>,
}

fn sym_sqrt(s: &Mat<f64>) -> Result<Mat<f64>, StatsError> {
    let eig = s
        .self_adjoint_eigen(Side::Lower)
        .map_err(|e| StatsError::Eigen(format!("{e:?}")))?;
    let u = eig.U();
    let l = eig.S().column_vector();
    let n = s.nrows();
    let scaled = Mat::from_fn(n, n, |i, j| u[(i, j)] * l[j].max(0.0).sqrt());
    Ok(&scaled * u.transpose())
}

/// `tr sqrt(S1 S2)` from the eigenvalues of `sqrt(S1) S2 sqrt(S1)`.
fn trace_sqrt_product(s1: &Mat<f64>, s2: &Mat<f64>) -> Result<f64, StatsError> {
    let r = sym_sqrt(s1)?;
    let m = &r * s2 * &r;
    let n = m.nrows();
    let m = Mat::from_fn(n, n, |i, j| 0.5 * (m[(i, j)] + m[(j, i)]));
    let ev = m
        .self_adjoint_eigenvalues(Side::Lower)
        .map_err(|e| StatsError::Eigen(format!("{e:?}")))?;
    Ok(ev.iter().map(|l| l.max(0.0).sqrt()).sum())
}

/// Fréchet distance between two Gaussians given by feature statistics.
pub fn frechet_distance(a: &FeatureStats, b: &FeatureStats) -> Result<Frechet, StatsError> {
    if a.dim != b.dim {
        return Err(StatsError::Dim(a.dim, b.dim));
    }
    for (s, what) in [(a, "first"), (b, "second")] {
        if s.mu.iter().chain(&s.sigma).any(|x| !x.is_finite()) {
            return Err(StatsError::NonFinite(what));
        }
    }
    let mut warnings = Vec::new();
    for s in [a, b] {
        if s.n < s.dim.min(FULL_RANK_SAMPLES) {
            warnings.push(format!(
                "{} samples < feature dimension {}: the covariance is rank-deficient and the \
                 distance is biased; compare only numbers computed with the same N",
                s.n, s.dim
            ));
        }
    }
    let mean_term: f64 = a.mu.iter().zip(&b.mu).map(|(x, y)| (x - y).powi(2)).sum();
    let (s1, s2) = (a.sigma_mat(), b.sigma_mat());
    let tr = |m: &Mat<f64>| (0..m.nrows()).map(|i| m[(i, i)]).sum::<f64>();
    let mut eps = 0.0;
    let mut covmean = trace_sqrt_product(&s1, &s2)?;
    if !covmean.is_finite() {
        // pytorch-fid: "fid calculation produces singular product; adding 1e-6 to diagonal".
        eps = 1e-6;
        warnings.push(format!(
            "singular product; adding {eps:e} to the covariance diagonals"
        ));
        let off = |m: &Mat<f64>| {
            Mat::from_fn(m.nrows(), m.ncols(), |i, j| {
                m[(i, j)] + if i == j { eps } else { 0.0 }
            })
        };
        covmean = trace_sqrt_product(&off(&s1), &off(&s2))?;
    }
    let trace_term = tr(&s1) + tr(&s2) - 2.0 * covmean;
    Ok(Frechet {
        value: mean_term + trace_term,
        mean_term,
        trace_term,
        eps,
        warnings,
    })
}

/// Kernel Inception Distance (or its classifier-space twin): mean and standard deviation of
/// the unbiased MMD^2 over random subsets.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kid {
    pub mean: f64,
    pub std: f64,
    pub subsets: usize,
    pub subset_size: usize,
}

fn rows_f64(x: &[f32], dim: usize, idx: &[usize]) -> Mat<f64> {
    Mat::from_fn(idx.len(), dim, |i, j| x[idx[i] * dim + j] as f64)
}

/// Unbiased MMD^2 with the cubic polynomial kernel between two row sets of equal width.
pub fn mmd2_cubic(x: &Mat<f64>, y: &Mat<f64>) -> f64 {
    let d = x.ncols() as f64;
    let k = |a: &Mat<f64>, b: &Mat<f64>| {
        let g = a * b.transpose();
        Mat::from_fn(g.nrows(), g.ncols(), |i, j| (g[(i, j)] / d + 1.0).powi(3))
    };
    let (m, n) = (x.nrows() as f64, y.nrows() as f64);
    let off_diag = |g: &Mat<f64>| {
        let mut s = 0.0;
        for i in 0..g.nrows() {
            for j in 0..g.ncols() {
                if i != j {
                    s += g[(i, j)];
                }
            }
        }
        s
    };
    let kxy = k(x, y);
    let sum_xy: f64 = (0..kxy.nrows())
        .flat_map(|i| (0..kxy.ncols()).map(move |j| (i, j)))
        .map(|(i, j)| kxy[(i, j)])
        .sum();
    off_diag(&k(x, x)) / (m * (m - 1.0)) + off_diag(&k(y, y)) / (n * (n - 1.0))
        - 2.0 * sum_xy / (m * n)
}

/// KID between feature sets `x` (`nx x dim`) and `y` (`ny x dim`): `subsets` random subsets
/// of `min(subset_size, nx, ny)` rows each, drawn without replacement from a seeded RNG.
pub fn kid(
    x: &[f32],
    y: &[f32],
    dim: usize,
    subsets: usize,
    subset_size: usize,
    seed: u64,
) -> Result<Kid, StatsError> {
    let (nx, ny) = (x.len() / dim, y.len() / dim);
    let m = subset_size.min(nx).min(ny);
    if m < 2 {
        return Err(StatsError::KidTooFew(nx, ny));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let vals: Vec<f64> = (0..subsets.max(1))
        .map(|_| {
            let ix = sample(&mut rng, nx, m).into_vec();
            let iy = sample(&mut rng, ny, m).into_vec();
            mmd2_cubic(&rows_f64(x, dim, &ix), &rows_f64(y, dim, &iy))
        })
        .collect();
    let k = vals.len() as f64;
    let mean = vals.iter().sum::<f64>() / k;
    let var = vals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / k;
    Ok(Kid {
        mean,
        std: var.sqrt(),
        subsets: vals.len(),
        subset_size: m,
    })
}

/// MMD^2 of the first `m` rows of each set (one deterministic "subset").
pub fn kid_first_rows(x: &[f32], y: &[f32], dim: usize, m: usize) -> f64 {
    let idx: Vec<usize> = (0..m).collect();
    mmd2_cubic(&rows_f64(x, dim, &idx), &rows_f64(y, dim, &idx))
}
