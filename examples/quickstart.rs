//! Build the tiny UNet, train it for a few steps on synthetic images on the CPU, and sample
//! four images with DDIM. `cargo run --release --example quickstart`.

use burn::tensor::Device;
use diffnas::data::Dataset;
use diffnas::diffusion::{NoiseSchedule, SamplerKind, SamplingRun, make_sampler, to_pixels};
use diffnas::genome::{Genome, ImageSpec, cost};
use diffnas::model::Unet;
use diffnas::train::{TrainConfig, TrainOptions, train};

fn main() {
    let genome = Genome::tiny_for(ImageSpec {
        channels: 1,
        size: 16,
    });
    let c = cost(&genome).expect("the preset is valid");
    println!(
        "tiny@16: {} parameters, {} MACs per image",
        c.params, c.macs
    );

    // Stripes: a pattern a few steps can start to learn.
    let n = 32;
    let pixels = (0..n * 256)
        .map(|i| if (i % 16) / 4 % 2 == 0 { 230 } else { 20 })
        .collect();
    let data = Dataset {
        name: "stripes".into(),
        pixels,
        labels: None,
        len: n,
        channels: 1,
        height: 16,
        width: 16,
    };
    let device = Device::flex().autodiff();
    let model = Unet::new(&genome, &device).expect("the preset is valid");
    let cfg = TrainConfig::tiny().with_steps(30);
    let out = train(
        model,
        &data,
        &cfg,
        &device,
        TrainOptions::default(),
        &mut |_| {},
    )
    .expect("training runs");
    for r in &out.log {
        println!("step {:3} loss {:.4}", r.step, r.loss);
    }

    let schedule = NoiseSchedule::new(cfg.beta_schedule, cfg.timesteps).expect("valid schedule");
    let sampler = make_sampler(SamplerKind::Ddim, schedule, 20, 0.0);
    let plain = Device::flex();
    let run = SamplingRun::new(sampler.as_ref(), 0, 0, 4, [1, 16, 16], &plain);
    let images = run.run(&out.ema, &mut |_, _| {});
    let values = images
        .into_data()
        .try_into_vec::<f32>()
        .expect("f32 images");
    let pixels = to_pixels(&values);
    println!(
        "sampled {} pixels, mean {:.1}",
        pixels.len(),
        pixels.iter().map(|&p| p as f64).sum::<f64>() / pixels.len() as f64
    );
}
