//! wgpu (WGSL) vs flex (CPU) parity: same weights, same input, the UNet's forward output and its
//! gradients agree. On a machine without a GPU this runs on Mesa's lavapipe (software Vulkan),
//! which `.ci/run` installs. Set DIFFNAS_SKIP_WGPU=1 to skip where no adapter exists. On wgpu the
//! UNet's convolutions run our im2col kernel (`model::im2col`), on flex Burn's `conv2d`, so these
//! are also the parity tests of that kernel, forward and through its autodiff node.
//!
//! Tolerance: max |wgpu - flex| <= 1e-4 * max |flex| + 1e-9 for every compared tensor (f32 with
//! different summation orders in convolutions, matmuls and reductions). Measured on lavapipe:
//! about 4e-7 relative on the output, 1e-5 or less on the gradients.

use crate::common::{Randomize, max_abs_diff, tiny16, to_vec};
use burn::module::Module;
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use diffnas::device::{DeviceChoice, select};
use diffnas::diffusion::eps_loss;
use diffnas::model::Unet;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

fn wgpu_device() -> Option<Device> {
    // Autotune results outlive the run next to the build (CI keeps its target directory), so
    // a later run does not re-tune every kernel on the software rasteriser.
    #[cfg(feature = "kernel-cache")]
    if let Some(dir) = std::env::var_os("CARGO_TARGET_DIR") {
        diffnas::device::configure_kernels(
            &std::path::PathBuf::from(dir).join("kernel-cache"),
            None,
        );
    }
    match select(DeviceChoice::Wgpu) {
        Ok(d) => {
            eprintln!("wgpu parity on {}", d.info);
            Some(d.device)
        }
        Err(e) if std::env::var_os("DIFFNAS_SKIP_WGPU").is_some() => {
            eprintln!("skipping wgpu parity: {e}");
            None
        }
        Err(e) => {
            panic!("no wgpu adapter ({e}); install mesa-vulkan-drivers or set DIFFNAS_SKIP_WGPU=1")
        }
    }
}

fn tensor(shape: [usize; 4], seed: u64, device: &Device) -> Tensor<4> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..shape.iter().product())
        .map(|_| StandardNormal.sample(&mut rng))
        .collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

fn check(name: &str, flex: &[f32], wgpu: &[f32]) {
    let scale = flex.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(
        scale > 0.0,
        "{name}: all zero, the comparison would say nothing"
    );
    let d = max_abs_diff(flex, wgpu);
    let tol = 1e-4 * scale + 1e-9;
    eprintln!(
        "{name}: max |diff| = {d:.3e}, max |flex| = {scale:.3e}, relative {:.2e}",
        d / scale
    );
    assert!(d <= tol, "{name}: max |wgpu - flex| = {d} > {tol}");
}

#[test]
fn unet_forward_and_gradients_match_flex() {
    let Some(wgpu) = wgpu_device() else { return };
    let flex = Device::flex();
    // tiny at 16x16 with scale-shift norm on, so every block kind is exercised
    // (attention at 4x4 and in the middle, skips, up/down-sampling).
    let mut g = tiny16();
    g.scale_shift_norm = true;
    let make = |device: &Device| {
        Unet::new(&g, &device.clone().autodiff())
            .unwrap()
            .map(&mut Randomize::new(5, 0.1))
    };
    let (mf, mw) = (make(&flex), make(&wgpu));
    let t = [3.0f32, 250.0, 600.0, 999.0];
    let run = |m: &Unet, device: &Device| {
        let device = device.clone().autodiff();
        let x = tensor([4, 1, 16, 16], 1, &device);
        let target = tensor([4, 1, 16, 16], 2, &device);
        let tt = Tensor::<1>::from_floats(t, &device);
        let y = m.forward(x, tt);
        let loss = eps_loss(y.clone(), target);
        let grads = GradientsParams::from_grads(loss.backward(), m);
        let pick = |id| to_vec(grads.get::<4>(id).expect("a gradient"));
        (
            to_vec(y.inner()),
            pick(m.stem.weight.id),
            pick(m.middle[0].attn.as_ref().unwrap().qkv.weight.id),
            pick(m.decoder[2].blocks[0].res.conv1.weight.id),
        )
    };
    let (yf, g1f, g2f, g3f) = run(&mf, &flex);
    let (yw, g1w, g2w, g3w) = run(&mw, &wgpu);
    check("forward output", &yf, &yw);
    check("grad stem.weight", &g1f, &g1w);
    check("grad middle attention qkv", &g2f, &g2w);
    check("grad decoder[2] conv1", &g3f, &g3w);

    // Inference (no graph, so no autodiff node around the kernel): still the same output.
    let infer = |m: &Unet, device: &Device| {
        let m = m.valid();
        let x = tensor([4, 1, 16, 16], 1, device);
        to_vec(m.forward(x, Tensor::<1>::from_floats(t, device)))
    };
    check("inference output", &infer(&mf, &flex), &infer(&mw, &wgpu));
}

/// The im2col kernel and its gradients (our col2im and weight-gradient matmuls), on the shapes a
/// UNet does not reach: a 5x5, dilation, asymmetric padding, a strided (permuted) input, several
/// batch chunks (a column budget of one image), a grouped convolution (which the kernel hands
/// to Burn), in both column layouts. Output and all three gradients against flex's `conv2d`.
#[cfg(feature = "gpu-kernels")]
#[test]
fn im2col_convolution_matches_flex_conv2d() {
    use burn::tensor::module::conv2d;
    use burn::tensor::ops::ConvOptions;
    use diffnas::model::im2col;
    let Some(wgpu) = wgpu_device() else { return };
    let flex = Device::flex();
    // (cin, cout, k, stride, padding [(t, b), (l, r)], dilation, groups, permuted input,
    // image [H, W], column budget of one image). Images of 256 output pixels or more (cases
    // 5-7) take the per-image column layout, smaller ones the shared one (`model::im2col`).
    type Case = (
        usize,
        usize,
        usize,
        usize,
        [(usize, usize); 2],
        usize,
        usize,
        bool,
        [usize; 2],
        bool,
    );
    let cases: [Case; 8] = [
        (3, 8, 3, 1, [(1, 1), (1, 1)], 1, 1, false, [9, 7], false),
        (4, 5, 5, 2, [(2, 1), (0, 2)], 1, 1, false, [9, 7], true),
        (6, 4, 3, 1, [(2, 2), (2, 2)], 2, 1, true, [9, 7], false),
        (4, 6, 1, 1, [(0, 0), (0, 0)], 1, 1, true, [9, 7], false),
        (4, 6, 3, 1, [(1, 1), (1, 1)], 1, 2, false, [9, 7], false),
        (3, 8, 3, 1, [(1, 1), (1, 1)], 1, 1, false, [17, 16], false),
        (4, 6, 3, 1, [(1, 1), (1, 1)], 1, 1, true, [16, 19], true),
        (5, 4, 3, 2, [(1, 0), (1, 0)], 1, 1, false, [33, 32], false),
    ];
    for (n, &(cin, cout, k, s, padding, d, groups, permuted, [h, w], one_image)) in
        cases.iter().enumerate()
    {
        let run = |device: &Device, ours: bool| {
            let ad = device.clone().autodiff();
            let x = tensor([3, cin, h, w], 10 + n as u64, &ad);
            // The same values, stored [B, H, W, C] and viewed as [B, C, H, W].
            let x = if permuted {
                let x = Tensor::<4>::from_data(x.permute([0, 2, 3, 1]).into_data(), &ad);
                x.permute([0, 3, 1, 2])
            } else {
                x
            }
            .require_grad();
            let w = tensor([cout, cin / groups, k, k], 20 + n as u64, &ad).require_grad();
            let b = tensor([1, 1, 1, cout], 30 + n as u64, &ad)
                .reshape([cout])
                .require_grad();
            let options = ConvOptions::new_with_padding([s, s], padding, [d, d], groups);
            let y = if ours {
                im2col::conv2d(x.clone(), w.clone(), Some(b.clone()), options)
            } else {
                conv2d(x.clone(), w.clone(), Some(b.clone()), options)
            };
            let ct = tensor(y.dims(), 40 + n as u64, &ad);
            let g = (y.clone() * ct).sum().backward();
            [
                to_vec(y.inner()),
                to_vec(x.grad(&g).unwrap()),
                to_vec(w.grad(&g).unwrap()),
                to_vec(b.grad(&g).unwrap()),
            ]
        };
        // One image's columns per chunk: three chunks for the batch of three.
        im2col::set_column_budget(if one_image {
            1
        } else {
            im2col::DEFAULT_COLUMN_BYTES
        });
        let (f, w) = (run(&flex, false), run(&wgpu, true));
        for (what, (f, w)) in ["output", "input grad", "weight grad", "bias grad"]
            .iter()
            .zip(f.iter().zip(&w))
        {
            check(&format!("im2col case {n} {what}"), f, w);
        }
    }
    im2col::set_column_budget(im2col::DEFAULT_COLUMN_BYTES);
}

/// The FID Inception on wgpu against pytorch-fid's features (same fixture as the flex test).
#[test]
fn inception_features_match_pytorch_fid_on_wgpu() {
    let Some(device) = wgpu_device() else { return };
    let p = crate::eval::parity();
    let ext = diffnas::eval::extract::InceptionExtractor::synthetic(&device);
    let t0 = std::time::Instant::now();
    let worst = crate::eval::check_features(&ext, &p, &[0, 4], 1e-4);
    eprintln!(
        "wgpu vs pytorch-fid: worst relative difference {worst:.2e} ({:.1} s incl. kernel compilation)",
        t0.elapsed().as_secs_f64()
    );
}

/// The committed Fashion-MNIST model (28x28, attention at 7x7 and in the middle, trained
/// weights) at one denoising input: wgpu inference against flex. The UNet test above runs at
/// 16x16, where attention sees at most 16 tokens. This one caught Burn's fused attention on
/// wgpu returning wrong values for strided q/k/v at 49 and 64 tokens: `diffnas sample` on wgpu
/// differed from flex by up to 136 of 255 levels. Attention is now two matmuls and a softmax
/// (`model::blocks`), checked by the next test.
#[test]
fn trained_fmnist_model_matches_flex() {
    use diffnas::genome::Genome;
    let Some(wgpu) = wgpu_device() else { return };
    let flex = Device::flex();
    let dir = std::path::Path::new("tests/fixtures/fmnist-tiny");
    let g = Genome::from_json(&std::fs::read_to_string(dir.join("genome.json")).unwrap()).unwrap();
    let run = |device: &Device| {
        let m = Unet::new(&g, device)
            .unwrap()
            .try_load_file(dir.join("ema.bpk"))
            .unwrap();
        let x = tensor([2, 1, 28, 28], 7, device);
        to_vec(m.forward(x, Tensor::<1>::from_floats([999.0, 400.0], device)))
    };
    check("fmnist-tiny inference", &run(&flex), &run(&wgpu));
}

/// The UNet's attention (`model::multi_head_attention`, strided q/k/v views of one qkv tensor)
/// on wgpu against flex at 16, 49 and 64 tokens, and against a reference on flex built from
/// contiguous per-head copies. Burn's fused `attention` is checked on the same strided views to
/// show why it is not used: at 49 and 64 tokens it is wrong on wgpu (exact for contiguous
/// inputs). If a Burn upgrade fixes it, the `fused_ok` assertion fails: time to switch back.
#[test]
fn strided_attention_matches_flex() {
    use burn::tensor::activation::softmax;
    use burn::tensor::module::attention;
    use burn::tensor::ops::AttentionModuleOptions;
    use diffnas::model::multi_head_attention;
    let Some(wgpu) = wgpu_device() else { return };
    let flex = Device::flex();
    let (b, nh, dh) = (2, 4, 24);
    let mut fused_ok = true;
    for l in [16, 49, 64] {
        let qkv = |device: &Device| tensor([b, 3 * nh * dh, l, 1], 1, device);
        let ours = |device: &Device| to_vec(multi_head_attention(qkv(device), nh));
        // q, k, v as contiguous [B, heads, L, dh] tensors built from host data.
        let heads = |i: usize| {
            let v = to_vec(qkv(&flex));
            let mut out = Vec::with_capacity(b * nh * l * dh);
            for bi in 0..b {
                for hi in 0..nh {
                    for t in 0..l {
                        for d in 0..dh {
                            out.push(v[((bi * 3 + i) * nh * dh + hi * dh + d) * l + t]);
                        }
                    }
                }
            }
            Tensor::<4>::from_data(TensorData::new(out, [b, nh, l, dh]), &flex)
        };
        let (q, k, v) = (heads(0), heads(1), heads(2));
        let w = softmax(q.matmul(k.swap_dims(2, 3)) * (dh as f64).powf(-0.5), 3);
        let reference = to_vec(w.matmul(v).swap_dims(2, 3).reshape([b, nh * dh, l, 1]));
        check(
            &format!("attention on flex, {l} tokens"),
            &reference,
            &ours(&flex),
        );
        check(
            &format!("attention on wgpu, {l} tokens"),
            &reference,
            &ours(&wgpu),
        );

        let x = qkv(&wgpu).reshape([b, 3, nh, dh, l]);
        let part = |i: usize| {
            x.clone()
                .narrow(1, i, 1)
                .reshape([b, nh, dh, l])
                .swap_dims(2, 3)
        };
        let fused = attention(
            part(0),
            part(1),
            part(2),
            None,
            None,
            AttentionModuleOptions::default(),
        );
        let fused = to_vec(fused.swap_dims(2, 3).reshape([b, nh * dh, l, 1]));
        let scale = reference.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        fused_ok &= max_abs_diff(&reference, &fused) <= 1e-4 * scale;
    }
    assert!(
        !fused_ok,
        "Burn's fused attention now matches on strided inputs: model::blocks can use it again"
    );
}

/// Mixed precision on the GPU backend: the UNet's forward and gradients in f16 against flex in
/// f32, within the bounds of `precision.rs` (the f32 parity above makes flex the reference).
/// lavapipe offers `shader-f16`, so WGSL's f16 runs here; bf16 does not exist in WGSL, and
/// asking for it is refused with the setting named.
#[test]
fn f16_unet_on_wgpu_matches_f32_on_flex_and_bf16_is_refused() {
    use crate::precision::{compare, forward_and_grads, model};
    use diffnas::precision::Precision;
    let Some(wgpu) = wgpu_device() else { return };
    let flex = Device::flex();
    Precision::F16
        .check(&wgpu)
        .expect("lavapipe and every shader-f16 adapter compute f16");
    let reference = forward_and_grads(&model(&flex), &flex, Precision::F32);
    let got = forward_and_grads(&model(&wgpu), &wgpu, Precision::F16);
    compare("wgpu", Precision::F16, &got, &reference);
    let e = Precision::Bf16.check(&wgpu).unwrap_err();
    assert!(
        e.contains("--precision bf16") && e.contains("no bf16 arithmetic"),
        "{e}"
    );
}

/// The fused GroupNorm + SiLU kernel (`model::gpu_norm`) on wgpu against the same computation
/// as plain Burn tensor ops on flex (group mean, biased variance, normalisation, per-image
/// affine, SiLU): the output and the gradients of the input, the scale and the shift. Shapes a
/// UNet reaches and some it does not: groups smaller than a cube's threads and larger (4,092
/// elements, not a power of two), one channel per group, an affine broadcast from `[1, C]`, a
/// strided (permuted) input, no SiLU, and an input whose mean is far from zero.
#[cfg(feature = "gpu-kernels")]
#[test]
fn group_norm_kernel_matches_burn_ops() {
    use burn::tensor::activation::silu;
    use diffnas::model::gpu_norm;
    let Some(wgpu) = wgpu_device() else { return };
    let flex = Device::flex();
    // ([B, C, H, W], groups, silu, scale per image (else broadcast from [1, C]), permuted, offset)
    type Case = ([usize; 4], usize, bool, bool, bool, f32);
    let cases: [Case; 5] = [
        ([2, 8, 5, 7], 4, true, true, false, 0.0),
        ([3, 6, 16, 16], 3, false, false, false, 0.0),
        ([1, 4, 33, 31], 1, true, true, true, 0.0),
        ([2, 32, 4, 4], 32, true, false, false, 0.0),
        ([2, 8, 8, 8], 2, true, true, false, 20.0),
    ];
    let eps = 1e-5;
    for (n, &(shape, groups, act, per_image, permuted, offset)) in cases.iter().enumerate() {
        let [b, c, h, w] = shape;
        let run = |device: &Device, ours: bool| {
            let ad = device.clone().autodiff();
            let x = tensor(shape, 50 + n as u64, &ad) + offset;
            let x = if permuted {
                let x = Tensor::<4>::from_data(x.permute([0, 2, 3, 1]).into_data(), &ad);
                x.permute([0, 3, 1, 2])
            } else {
                x
            }
            .require_grad();
            let rows = if per_image { b } else { 1 };
            let scale = (tensor([rows, c, 1, 1], 60 + n as u64, &ad) * 0.5 + 1.0)
                .reshape([rows, c])
                .require_grad();
            let shift = tensor([rows, c, 1, 1], 70 + n as u64, &ad)
                .reshape([rows, c])
                .require_grad();
            let (s, t) = (scale.clone().expand([b, c]), shift.clone().expand([b, c]));
            let y = if ours {
                gpu_norm::group_norm(x.clone(), s, t, groups, eps, act)
            } else {
                let xg = x.clone().reshape([b, groups, c / groups * h * w]);
                let mean = xg.clone().mean_dim(2);
                let var = (xg.clone() - mean.clone()).powf_scalar(2.0).mean_dim(2);
                let nrm = ((xg - mean) / (var + eps).sqrt()).reshape([b, c, h, w]);
                let z = nrm * s.reshape([b, c, 1, 1]) + t.reshape([b, c, 1, 1]);
                if act { silu(z) } else { z }
            };
            let ct = tensor(y.dims(), 80 + n as u64, &ad);
            let g = (y.clone() * ct).sum().backward();
            [
                to_vec(y.inner()),
                to_vec(x.grad(&g).unwrap()),
                to_vec(scale.grad(&g).unwrap()),
                to_vec(shift.grad(&g).unwrap()),
            ]
        };
        let (f, w) = (run(&flex, false), run(&wgpu, true));
        for (what, (f, w)) in ["output", "input grad", "scale grad", "shift grad"]
            .iter()
            .zip(f.iter().zip(&w))
        {
            check(&format!("group norm case {n} {what}"), f, w);
        }
    }
}

/// `train::FusedAdamW` on wgpu (our one-kernel step, `train::gpu_optim`) against Burn's `AdamW`
/// on flex: two steps (the first starts the moments), weight decay, a rank-4 and a rank-1
/// parameter, the gradient multiplier of clipping (`with_grad_scale`) on one step and off on
/// the other. Weights and both moments within 1e-5 of the largest value (f32; the GPU's
/// division and square root may round differently from the CPU's in the last bit).
#[test]
fn adamw_kernel_matches_burn_adamw() {
    use burn::optim::{AdamWState, Optimizer};
    use diffnas::train::{FusedAdamW, with_grad_scale};
    let Some(wgpu) = wgpu_device() else { return };
    let flex = Device::flex();
    let (b1, b2, eps, wd) = (0.9f32, 0.999f32, 1e-8f32, 0.01f32);
    let (ours, burn) = crate::common::adamw_pair(b1, b2, eps, wd);
    fn run<const D: usize>(
        ours: &FusedAdamW,
        burn: &burn::optim::AdamW,
        shape: [usize; D],
        wgpu: &Device,
        flex: &Device,
        seed: u64,
    ) {
        let n: usize = shape.iter().product();
        let data = |s: u64| {
            let mut rng = ChaCha8Rng::seed_from_u64(s);
            let v: Vec<f32> = (0..n).map(|_| StandardNormal.sample(&mut rng)).collect();
            TensorData::new(v, shape)
        };
        let p0 = data(seed);
        let (mut pw, mut pf) = (
            Tensor::<D>::from_data(p0.clone(), wgpu),
            Tensor::<D>::from_data(p0, flex),
        );
        let (mut sw, mut sf): (Option<AdamWState<D>>, Option<AdamWState<D>>) = (None, None);
        for (step, coef) in [(0u64, Some(0.37f32)), (1, None)] {
            let g = data(seed + 10 + step);
            let gw = Tensor::<D>::from_data(g.clone(), wgpu);
            let mut gf = Tensor::<D>::from_data(g, flex);
            let c = coef.map(|c| Tensor::<1>::from_data(TensorData::new(vec![c], [1]), wgpu));
            if let Some(c) = coef {
                gf = gf.mul_scalar(c);
            }
            let lr = 1e-3 * (step + 1) as f64;
            (pw, sw) = with_grad_scale(c, || ours.step(lr, pw.clone(), gw, sw.clone()));
            (pf, sf) = burn.step(lr, pf.clone(), gf, sf.clone());
            let (w, f) = (sw.as_ref().unwrap(), sf.as_ref().unwrap());
            assert_eq!(w.momentum.time, f.momentum.time);
            let what = |x: &str| format!("{shape:?} step {} {x}", step + 1);
            for (x, f, w) in [
                ("weights", pf.clone(), pw.clone()),
                (
                    "first moment",
                    f.momentum.moment_1.clone(),
                    w.momentum.moment_1.clone(),
                ),
                (
                    "second moment",
                    f.momentum.moment_2.clone(),
                    w.momentum.moment_2.clone(),
                ),
            ] {
                let (f, w) = (to_vec(f), to_vec(w));
                check(&what(x), &f, &w);
                let scale = f.iter().fold(0.0f32, |m, v| m.max(v.abs()));
                let d = max_abs_diff(&f, &w);
                assert!(
                    d <= 1e-5 * scale,
                    "{}: {d} apart (largest {scale})",
                    what(x)
                );
            }
        }
    }
    run(&ours, &burn, [3, 5, 7, 2], &wgpu, &flex, 1);
    run(&ours, &burn, [37], &wgpu, &flex, 2);
}

/// The clipped training step (`train_step_marked`: global norm, the multiplier folded into the
/// AdamW kernel, the EMA) on wgpu against the same steps in f64 by hand.
#[test]
fn clipped_training_steps_on_wgpu_match_the_closed_form() {
    let Some(wgpu) = wgpu_device() else { return };
    crate::train::clipped_steps_match_closed_form(&wgpu.autodiff());
}
