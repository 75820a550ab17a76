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

fn evaluator() -> Option<ProxyEvaluator> {
    let dir = crate::data::fashion_dir()?;
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
    Some(ProxyEvaluator {
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
    })
}

#[test]
fn trials_succeed_or_fail_with_reasons() {
    let Some(mut ev) = evaluator() else { return };
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
