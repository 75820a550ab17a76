//! Does the proxy rank like the real thing? Spearman's rank correlation between proxy scores
//! and longer-training scores of the same architectures (ALGORITHMS.md section 4).

/// Ranks from 1, ties sharing their average rank (as scipy's `rankdata`).
pub fn ranks(x: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..x.len()).collect();
    idx.sort_by(|&a, &b| x[a].partial_cmp(&x[b]).expect("finite values"));
    let mut r = vec![0.0; x.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && x[idx[j + 1]] == x[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

/// Spearman's rho: Pearson's correlation of the ranks. None with fewer than 2 pairs or when
/// one side is constant.
pub fn spearman(a: &[f64], b: &[f64]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "paired samples");
    if a.len() < 2 {
        return None;
    }
    let (ra, rb) = (ranks(a), ranks(b));
    let n = a.len() as f64;
    let (ma, mb) = (ra.iter().sum::<f64>() / n, rb.iter().sum::<f64>() / n);
    let cov: f64 = ra.iter().zip(&rb).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = ra.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = rb.iter().map(|y| (y - mb).powi(2)).sum();
    (va > 0.0 && vb > 0.0).then(|| cov / (va * vb).sqrt())
}

/// Kendall's tau-b (ties on either side accounted for). None with fewer than 2 pairs or when
/// one side is constant.
pub fn kendall_tau(a: &[f64], b: &[f64]) -> Option<f64> {
    assert_eq!(a.len(), b.len(), "paired samples");
    let n = a.len();
    let (mut concordant, mut discordant, mut ties_a, mut ties_b) = (0i64, 0i64, 0i64, 0i64);
    for i in 0..n {
        for j in i + 1..n {
            use std::cmp::Ordering::Equal;
            let da = a[i].partial_cmp(&a[j]).expect("finite values");
            let db = b[i].partial_cmp(&b[j]).expect("finite values");
            match (da, db) {
                (Equal, Equal) => {}
                (Equal, _) => ties_a += 1,
                (_, Equal) => ties_b += 1,
                _ if da == db => concordant += 1,
                _ => discordant += 1,
            }
        }
    }
    let n0 = (concordant + discordant + ties_a) as f64;
    let n1 = (concordant + discordant + ties_b) as f64;
    (n0 > 0.0 && n1 > 0.0).then(|| (concordant - discordant) as f64 / (n0 * n1).sqrt())
}

/// Percentile bootstrap interval (`level`, e.g. 0.90) of Spearman's rho: `resamples` draws of
/// the pairs with replacement from a seeded RNG; draws where rho is undefined (a constant
/// side) are skipped. None when fewer than 3 pairs or no draw is defined.
pub fn bootstrap_interval(
    a: &[f64],
    b: &[f64],
    resamples: usize,
    level: f64,
    seed: u64,
) -> Option<(f64, f64)> {
    use rand::{RngExt, SeedableRng};
    let n = a.len();
    if n < 3 {
        return None;
    }
    let mut rng = rand::rngs::ChaCha8Rng::seed_from_u64(seed ^ 0xb007_0000_0000_0000);
    let mut rhos: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            let idx: Vec<usize> = (0..n).map(|_| rng.random_range(0..n)).collect();
            let x: Vec<f64> = idx.iter().map(|&i| a[i]).collect();
            let y: Vec<f64> = idx.iter().map(|&i| b[i]).collect();
            spearman(&x, &y)
        })
        .collect();
    if rhos.is_empty() {
        return None;
    }
    rhos.sort_by(f64::total_cmp);
    let q = |p: f64| rhos[((p * (rhos.len() - 1) as f64).round() as usize).min(rhos.len() - 1)];
    let tail = (1.0 - level) / 2.0;
    Some((q(tail), q(1.0 - tail)))
}
