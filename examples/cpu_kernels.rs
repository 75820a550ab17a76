//! Times diffnas's CPU kernels (`diffnas::cpu`) on the convolution and GroupNorm shapes of a
//! genome's UNet, beside Burn's own `flex` ops on the same shapes, one op at a time:
//!
//! ```sh
//! cargo run --release --example cpu_kernels -- tiny 8
//! cargo run --release --example cpu_kernels -- examples/bench/genomes/fmnist-evolution-best.json 32
//! ```
//!
//! Each line is one distinct shape: how often the UNet runs it per forward pass, the forward
//! and backward milliseconds of ours and of Burn's, and ours in GFLOP/s (2 FLOPs per MAC; the
//! backward is two products). Each time is the fastest of five rounds. `RAYON_NUM_THREADS`
//! sets the thread count.

use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Distribution, Tensor};
use diffnas::cpu::conv::{self, Bias, ConvGeometry, Wanted};
use diffnas::cpu::norm::{self, NormGeometry};
use diffnas::genome::Genome;
use std::collections::BTreeMap;
use std::time::Instant;

/// Seconds per call: the fastest of five rounds of `reps` calls (the machine's other load only
/// ever adds time).
fn time<R>(reps: usize, mut f: impl FnMut() -> R) -> f64 {
    f();
    (0..5)
        .map(|_| {
            let t0 = Instant::now();
            for _ in 0..reps {
                std::hint::black_box(f());
            }
            t0.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min)
}

fn randn(n: usize, seed: u64) -> Vec<f32> {
    // A cheap deterministic fill; the values do not matter for timing.
    (0..n)
        .map(|i| {
            (((i as u64).wrapping_mul(2654435761).wrapping_add(seed) % 2000) as f32 / 1000.0) - 1.0
        })
        .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = args.first().map_or("tiny", String::as_str);
    let batch: usize = args.get(1).map_or(8, |b| b.parse().expect("batch size"));
    let genome = match Genome::preset(name) {
        Some(g) => g,
        None => {
            let text = std::fs::read_to_string(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
        }
    };
    let layout = genome.layout().expect("a valid genome");
    let device = Device::flex();
    println!(
        "{name}, batch {batch}, {} threads",
        rayon::current_num_threads()
    );

    // The UNet's convolutions: (cin, cout, k, stride, size) -> count.
    let mut convs = Convs::new();
    let mut norms = Norms::new();
    let size = layout.image.size;
    let c0 = layout.base_channels;
    *convs
        .entry((layout.image.channels, c0, 3, 1, size))
        .or_default() += 1;
    type Convs = BTreeMap<(usize, usize, usize, usize, usize), usize>;
    type Norms = BTreeMap<(usize, usize), usize>;
    fn add_block(
        convs: &mut Convs,
        norms: &mut Norms,
        s: &diffnas::genome::ResBlockShape,
        attention: bool,
    ) {
        let r = s.resolution;
        *norms.entry((s.in_channels, r)).or_default() += 1;
        *convs
            .entry((s.in_channels, s.hidden_channels, s.kernels[0], 1, r))
            .or_default() += 1;
        *norms.entry((s.hidden_channels, r)).or_default() += 1;
        *convs
            .entry((s.hidden_channels, s.out_channels, s.kernels[1], 1, r))
            .or_default() += 1;
        if s.in_channels != s.out_channels {
            *convs
                .entry((s.in_channels, s.out_channels, 1, 1, r))
                .or_default() += 1;
        }
        if attention {
            *norms.entry((s.out_channels, r)).or_default() += 1;
            *convs
                .entry((s.out_channels, 3 * s.out_channels, 1, 1, r))
                .or_default() += 1;
            *convs
                .entry((s.out_channels, s.out_channels, 1, 1, r))
                .or_default() += 1;
        }
    }
    for (blocks, down) in &layout.encoder {
        for s in blocks {
            add_block(&mut convs, &mut norms, s, s.attention);
        }
        if let Some((c, r)) = down {
            *convs.entry((*c, *c, 3, 2, *r)).or_default() += 1;
        }
    }
    // The middle's first block is always followed by attention.
    add_block(&mut convs, &mut norms, &layout.middle[0], true);
    add_block(&mut convs, &mut norms, &layout.middle[1], false);
    for (blocks, up) in &layout.decoder {
        for s in blocks {
            add_block(&mut convs, &mut norms, s, s.attention);
        }
        if let Some((c, r)) = up {
            *convs.entry((*c, *c, 3, 1, 2 * r)).or_default() += 1;
        }
    }
    *norms.entry((layout.head_channels, size)).or_default() += 1;
    *convs
        .entry((layout.head_channels, layout.image.channels, 3, 1, size))
        .or_default() += 1;

    println!(
        "{:>28} {:>3} | {:>8} {:>8} {:>8} | {:>8} {:>8} | {:>7} {:>7}",
        "conv (cin>cout k s @hw)",
        "n",
        "fwd ms",
        "bwd ms",
        "im2col",
        "burn fwd",
        "burn bwd",
        "fwd GF",
        "bwd GF"
    );
    let (mut ours_total, mut burn_total) = (0.0, 0.0);
    for (&(cin, cout, k, s, hw), &n) in &convs {
        let p = k / 2;
        let g = ConvGeometry::new(
            [batch, cin, hw, hw],
            [cout, cin, k, k],
            [s, s],
            [1, 1],
            [(p, p), (p, p)],
        )
        .expect("shape");
        let x = randn(batch * cin * hw * hw, 1);
        let w = randn(cout * cin * k * k, 2);
        let b = randn(cout, 3);
        let dy = randn(batch * cout * g.p(), 4);
        let reps = (5e7 / g.macs().max(1) as f64).clamp(2.0, 50.0) as usize;
        let fwd = time(reps, || conv::forward(&g, &x, &w, Bias::Channel(&b)));
        let bwd = time(reps, || {
            conv::backward(
                &g,
                &x,
                &w,
                &dy,
                Wanted {
                    x: true,
                    weight: true,
                    bias: true,
                },
            )
        });
        // Burn's forward and backward (autodiff) on the same shape.
        let ad = device.clone().autodiff();
        let xt = Tensor::<4>::random([batch, cin, hw, hw], Distribution::Normal(0.0, 1.0), &ad);
        let wt = Tensor::<4>::random([cout, cin, k, k], Distribution::Normal(0.0, 1.0), &ad);
        let bt = Tensor::<1>::random([cout], Distribution::Normal(0.0, 1.0), &ad);
        let opts = ConvOptions::new([s, s], [p, p], [1, 1], 1);
        let burn_fwd = time(reps, || {
            conv2d(
                xt.clone().inner(),
                wt.clone().inner(),
                Some(bt.clone().inner()),
                opts.clone(),
            )
            .into_data()
        });
        let burn_all = time(reps, || {
            let (x, w, bb) = (
                xt.clone().require_grad(),
                wt.clone().require_grad(),
                bt.clone().require_grad(),
            );
            let y = conv2d(x, w, Some(bb), opts.clone());
            y.sum().backward()
        });
        let gf = |secs: f64, products: f64| products * 2.0 * g.macs() as f64 / secs / 1e9;
        println!(
            "{:>28} {:>3} | {:>8.3} {:>8.3} {:>8} | {:>8.3} {:>8.3} | {:>7.1} {:>7.1}",
            format!("{cin}>{cout} {k}x{k} s{s} @{hw}"),
            n,
            fwd * 1e3,
            bwd * 1e3,
            "",
            burn_fwd * 1e3,
            (burn_all - burn_fwd).max(0.0) * 1e3,
            gf(fwd, 1.0),
            gf(bwd, 2.0)
        );
        ours_total += n as f64 * (fwd + bwd);
        burn_total += n as f64 * burn_all;
    }
    println!(
        "conv total per step (forward + backward): ours {:.1} ms, Burn {:.1} ms",
        ours_total * 1e3,
        burn_total * 1e3
    );

    println!(
        "{:>28} {:>3} | {:>8} {:>8} | {:>9} {:>9}",
        "group norm + silu (c @hw)", "n", "fwd ms", "bwd ms", "fwd GB/s", "bwd GB/s"
    );
    let groups = layout.norm_groups;
    let mut norm_total = 0.0;
    for (&(c, hw), &n) in &norms {
        let g = NormGeometry::new([batch, c, hw, hw], groups).expect("shape");
        let x = randn(batch * c * hw * hw, 5);
        let dy = randn(x.len(), 6);
        let (sc, sh) = (randn(batch * c, 7), randn(batch * c, 8));
        let reps = (1e7 / x.len() as f64).clamp(2.0, 400.0) as usize;
        let fwd = time(reps, || norm::forward(&g, &x, &sc, &sh, 1e-5, true));
        let (_, stats) = norm::forward(&g, &x, &sc, &sh, 1e-5, true);
        let bwd = time(reps, || norm::backward(&g, &x, &sc, &sh, &stats, &dy, true));
        let bytes = x.len() as f64 * 4.0;
        println!(
            "{:>28} {:>3} | {:>8.3} {:>8.3} | {:>9.1} {:>9.1}",
            format!("{c} @{hw}"),
            n,
            fwd * 1e3,
            bwd * 1e3,
            4.0 * bytes / fwd / 1e9,
            6.0 * bytes / bwd / 1e9
        );
        norm_total += n as f64 * (fwd + bwd);
    }
    println!("group norm total per step: {:.1} ms", norm_total * 1e3);
}
