//! The proxy trial evaluator on a slice of real Fashion-MNIST: a good trial is scored with
//! params/MACs/timings; a diverging one, an invalid genome and an over-budget genome are
//! recorded as failed/invalid with their reasons instead of stopping anything.

use burn::tensor::Device;
use diffnas::data::{DataSource, Split};
use diffnas::eval::classifier::{Classifier, ClassifierMeta};
use diffnas::eval::extract::{ClassifierExtractor, FeatureExtractor, dataset_source, summarise};
use diffnas::eval::reference::Reference;
use diffnas::genome::{Budget, Genome, ImageSpec, SearchSpace};
use diffnas::rundir::{RunFiles, RunSource, Weights, load_denoiser};
use diffnas::trial::{Evaluator, ProxyEvaluator, TrialConfig, TrialStatus};
use std::sync::atomic::AtomicBool;

fn evaluator() -> ProxyEvaluator {
    let dir = crate::data::fashion_dir()
        .expect("Fashion-MNIST (Debian's dataset-fashion-mnist) is installed");
    let mut data = DataSource::FashionMnist(Some(dir))
        .load(Split::Train)
        .unwrap();
    data.truncate(512);
    let device = Device::flex();
    device.seed(5);
    let meta = ClassifierMeta {
        input: [1, 28, 28],
        classes: 10,
        data: "untrained".into(),
        train_images: 0,
        test_accuracy: 0.0,
        epochs: 0,
        seed: 5,
    };
    let ext = ClassifierExtractor::new(
        Classifier::new([1, 28, 28], 10, &device),
        meta,
        "untrained",
        &device,
    );
    let sum = summarise(&ext, 512, 512, &mut dataset_source(&data, 0), &mut |_| {}).unwrap();
    let reference = Reference::from_summary(
        sum,
        &ext.id().clone(),
        "fashion-mnist",
        "train",
        [1, 28, 28],
    );
    let mut cfg = TrialConfig::rapid(12, 8);
    cfg.score.n = 32;
    cfg.score.steps = 2;
    cfg.kid = None;
    let space = SearchSpace::for_image(ImageSpec {
        channels: 1,
        size: 28,
    })
    .with_budget(Budget {
        max_params: Some(1_000_000),
        max_macs: None,
        min_params: None,
    });
    ProxyEvaluator {
        space,
        data,
        cfg,
        extractor: Box::new(ext),
        reference,
        device,
        source: Some(RunSource {
            data: DataSource::FashionMnist(None),
            max_images: Some(512),
            device: diffnas::device::flex().info,
        }),
        progress: None,
    }
}

#[test]
fn trials_succeed_or_fail_with_reasons() {
    let mut ev = evaluator();
    let stop = AtomicBool::new(false);
    let g = Genome::tiny_for(ImageSpec {
        channels: 1,
        size: 28,
    });
    let dir = tempfile::tempdir().unwrap();
    let ok = ev.evaluate(&g, Some(dir.path()), &stop);
    assert_eq!(ok.status, TrialStatus::Ok, "{:?}", ok.reason);
    // The trial's folder is a complete run directory: the genome as trained, the trial's
    // configuration, and weights that load.
    let (genome, files) = RunFiles::read(dir.path()).unwrap();
    let mut trained = g.clone();
    trained.dropout = ev.cfg.proxy_dropout.unwrap();
    assert_eq!(genome, trained, "the genome as trained");
    assert_eq!(files.config, ev.cfg.train);
    assert_eq!(files.max_images, Some(512));
    let run = load_denoiser(dir.path(), Weights::Ema, &Device::flex()).unwrap();
    assert_eq!(run.genome, genome);
    assert_eq!(ok.metric, "RFD-classifier");
    // The record says how the score was made.
    let proxy = ok.proxy.clone().expect("a scored trial records its proxy");
    assert_eq!(proxy.label(), "RFD-classifier @ 32 x DDIM-2");
    assert_eq!(ev.metric(), proxy.label());
    assert_eq!(
        (proxy.n, proxy.sampling_steps, proxy.train_steps),
        (32, 2, 12)
    );
    assert_eq!(proxy.extractor.kind, "classifier");
    // The score's own caveat (32 samples in 128-d features) is in the record.
    assert!(
        ok.warnings.len() == 1 && ok.warnings[0].contains("32 samples < feature dimension 128"),
        "{:?}",
        ok.warnings
    );
    assert!(ok.score.unwrap().is_finite() && ok.score.unwrap() > 0.0);
    assert_eq!(ok.params, Some(diffnas::genome::cost(&g).unwrap().params));
    assert!(ok.train_seconds > 0.0 && ok.score_seconds > 0.0);
    assert!(ok.final_loss.is_some());

    // Diverging: Adam with eps 0 divides 0 by 0 for every parameter whose first gradient is
    // exactly zero (all of those behind the zero-initialised output conv): NaN weights.
    ev.cfg.train.adam_eps = 0.0;
    ev.cfg.train.log_every = 1;
    let bad = ev.evaluate(&g, None, &stop);
    assert_eq!(bad.status, TrialStatus::Failed);
    assert!(
        bad.reason.as_deref().unwrap().contains("loss became"),
        "{:?}",
        bad.reason
    );
    assert!(bad.score.is_none() && bad.params.is_some());

    // Invalid and over budget: rejected before training, with the JSON path / budget named.
    let mut invalid = g.clone();
    invalid.encoder[0].channel_mult = 7;
    let r = ev.evaluate(&invalid, None, &stop);
    assert_eq!(r.status, TrialStatus::Invalid);
    assert!(r.reason.unwrap().contains("encoder[0].channel_mult"));
    let mut big = g.clone();
    big.base_channels = 256;
    let r = ev.evaluate(&big, None, &stop);
    assert_eq!(r.status, TrialStatus::Invalid);
    assert!(r.reason.unwrap().contains("max_params"));
}

#[test]
fn an_inception_proxy_below_2048_samples_carries_a_warning() {
    let cfg = TrialConfig::rapid(200, 32);
    let mut p = cfg.proxy(&diffnas::eval::ExtractorId::inception(
        "0123456789abcdef0123",
    ));
    p.n = 500;
    assert_eq!(p.label(), "RFID @ 500 x DDIM-50");
    let w = p.warnings();
    assert_eq!(w.len(), 1);
    assert!(
        w[0].contains("500 samples") && w[0].contains("2048"),
        "{w:?}"
    );
    p.n = 2048;
    assert!(p.warnings().is_empty());
    // The classifier's features are 128-d: no warning at any N the search uses.
    let mut c = cfg.proxy(&diffnas::eval::ExtractorId::classifier("0123456789abcdef"));
    c.n = 500;
    assert_eq!(c.label(), "RFD-classifier @ 500 x DDIM-50");
    assert!(c.warnings().is_empty());
}

#[test]
fn held_out_denoising_loss_is_lower_after_training() {
    use burn::module::Module;
    use diffnas::diffusion::NoiseSchedule;
    use diffnas::eval::heldout::HeldOutSet;
    use diffnas::model::Unet;
    use diffnas::train::{TrainConfig, TrainOptions, train};
    let dir = crate::data::fashion_dir()
        .expect("Fashion-MNIST (Debian's dataset-fashion-mnist) is installed");
    let src = DataSource::FashionMnist(Some(dir));
    let mut data = src.load(Split::Train).unwrap();
    data.truncate(512);
    let test = src.load(Split::Test).unwrap();
    let cfg = TrainConfig::new()
        .with_steps(60)
        .with_batch_size(8)
        .with_lr(1e-3)
        .with_warmup_steps(5)
        .with_ema_decay(0.9)
        .with_checkpoint_every(0);
    let schedule = NoiseSchedule::new(cfg.beta_schedule, cfg.timesteps).unwrap();
    let set = HeldOutSet::new(&test, 128, cfg.timesteps, 0);
    assert_eq!(set.len(), 128);
    let g = Genome::tiny_for(ImageSpec {
        channels: 1,
        size: 28,
    });
    let device = Device::flex();
    let ad = device.clone().autodiff();
    ad.seed(0);
    let model = Unet::new(&g, &ad).unwrap();
    // The UNet's output convolution starts at zero: it predicts no noise, and the loss is
    // the noise's mean square, 1 up to sampling error (128 x 784 draws).
    let untrained = set.eps_mse(&model.valid(), &schedule, &device, 64);
    assert!((untrained - 1.0).abs() < 0.02, "{untrained}");
    // The same triples give the same value, whatever the batch size.
    let again = set.eps_mse(&model.valid(), &schedule, &device, 50);
    assert!((again - untrained).abs() < 1e-6, "{again} vs {untrained}");
    let out = train(
        model,
        &data,
        &cfg,
        &ad,
        TrainOptions::default(),
        &mut |_| {},
    )
    .unwrap();
    let trained = set.eps_mse(&out.ema, &schedule, &device, 64);
    assert!(
        trained < 0.6 * untrained,
        "trained {trained} vs untrained {untrained}"
    );
}
