//! Data readers on real Fashion-MNIST, corrupt and truncated files, CIFAR-10 and image folders.

use diffnas::data::{
    Batcher, DataError, DataSource, Dataset, Split, read_cifar10, read_idx_images, read_idx_labels,
};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Debian's Fashion-MNIST (installed by `.ci/run`). Set DIFFNAS_SKIP_FASHION_MNIST=1 to skip on
/// a machine without it.
pub fn fashion_dir() -> Option<PathBuf> {
    let dir = DataSource::fashion_mnist_dirs()
        .into_iter()
        .find(|d| d.join("train-images-idx3-ubyte.gz").is_file());
    if dir.is_none() && std::env::var_os("DIFFNAS_SKIP_FASHION_MNIST").is_none() {
        panic!(
            "Fashion-MNIST not found (apt-get install dataset-fashion-mnist, or set \
             DIFFNAS_FASHION_MNIST=DIR; DIFFNAS_SKIP_FASHION_MNIST=1 skips)"
        );
    }
    dir
}

#[test]
fn real_fashion_mnist() {
    let Some(dir) = fashion_dir() else { return };
    let src = DataSource::FashionMnist(Some(dir));
    let train = src.load(Split::Train).unwrap();
    let test = src.load(Split::Test).unwrap();
    assert_eq!(
        (train.len, train.channels, train.height, train.width),
        (60000, 1, 28, 28)
    );
    assert_eq!(test.len, 10000);
    // Fashion-MNIST is balanced: 6,000 training images per class.
    let mut counts = [0usize; 10];
    for &l in train.labels.as_ref().unwrap() {
        counts[l as usize] += 1;
    }
    assert_eq!(counts, [6000; 10]);
    // Real images: not blank, with a dark background (corners mostly 0).
    let mean = train.pixels.iter().map(|&p| p as f64).sum::<f64>() / train.pixels.len() as f64;
    assert!((60.0..90.0).contains(&mean), "mean pixel {mean}");
    // Padding to 32x32 keeps the picture centred with a zero border.
    let mut small = test.clone();
    small.truncate(3);
    let padded = small.to_spec(1, 32).unwrap();
    assert_eq!((padded.height, padded.len), (32, 3));
    let img = padded.image(0);
    assert!(img[..64].iter().all(|&p| p == 0));
    assert_eq!(img[2 * 32 + 2..2 * 32 + 30], small.image(0)[..28]);
}

fn idx_bytes(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend(d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

fn message(e: DataError) -> String {
    e.to_string()
}

#[test]
fn idx_reader_accepts_good_files_and_names_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let pixels: Vec<u8> = (0..2 * 3 * 4).map(|i| i as u8).collect();
    std::fs::write(p("ok"), idx_bytes(0x803, &[2, 3, 4], &pixels)).unwrap();
    std::fs::write(p("ok.gz"), gz(&idx_bytes(0x803, &[2, 3, 4], &pixels))).unwrap();
    for f in ["ok", "ok.gz"] {
        let (v, n, h, w) = read_idx_images(&p(f)).unwrap();
        assert_eq!((n, h, w), (2, 3, 4));
        assert_eq!(v, pixels);
    }
    std::fs::write(p("labels"), idx_bytes(0x801, &[3], &[1, 2, 9])).unwrap();
    assert_eq!(read_idx_labels(&p("labels")).unwrap(), vec![1, 2, 9]);

    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated",
            idx_bytes(0x803, &[2, 3, 4], &pixels[..10]),
            "truncated",
        ),
        (
            "trailing",
            idx_bytes(0x803, &[2, 3, 4], &[pixels.clone(), vec![0]].concat()),
            "trailing data",
        ),
        (
            "magic",
            idx_bytes(0x801, &[2, 3, 4], &pixels),
            "bad magic number 0x00000801",
        ),
        ("short", vec![0, 0, 8], "too short for an IDX header"),
        (
            "header",
            idx_bytes(0x803, &[2], &[]),
            "the header needs 16 bytes",
        ),
        (
            "badgz",
            {
                let mut g = gz(&idx_bytes(0x803, &[2, 3, 4], &pixels));
                let n = g.len();
                g.truncate(n - 12);
                g
            },
            "corrupt gzip stream",
        ),
    ];
    for (name, bytes, want) in cases {
        std::fs::write(p(name), bytes).unwrap();
        let e = message(read_idx_images(&p(name)).unwrap_err());
        assert!(e.contains(want), "{name}: {e}");
        assert!(
            e.contains(&p(name).display().to_string()),
            "{name}: the error names the file: {e}"
        );
    }
    let e = message(read_idx_images(&p("missing")).unwrap_err());
    assert!(e.contains("missing"), "{e}");
}

#[test]
fn fashion_mnist_folder_errors() {
    let dir = tempfile::tempdir().unwrap();
    let e = DataSource::FashionMnist(Some(dir.path().to_path_buf()))
        .load(Split::Train)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("train-images-idx3-ubyte") && e.contains("not found"),
        "{e}"
    );
    // Labels that disagree with the images in count.
    std::fs::write(
        dir.path().join("t10k-images-idx3-ubyte"),
        idx_bytes(0x803, &[2, 2, 2], &[0; 8]),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("t10k-labels-idx1-ubyte"),
        idx_bytes(0x801, &[3], &[0; 3]),
    )
    .unwrap();
    let e = DataSource::FashionMnist(Some(dir.path().to_path_buf()))
        .load(Split::Test)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("has 3 labels but the image file has 2 images"),
        "{e}"
    );
}

fn cifar_record(label: u8, seed: u8) -> Vec<u8> {
    let mut r = vec![label];
    r.extend((0..3072).map(|i| (i as u8).wrapping_mul(seed)));
    r
}

#[test]
fn cifar10_reader() {
    let dir = tempfile::tempdir().unwrap();
    let batch: Vec<u8> = [cifar_record(3, 1), cifar_record(9, 7)].concat();
    for i in 1..=5 {
        std::fs::write(dir.path().join(format!("data_batch_{i}.bin")), &batch).unwrap();
    }
    std::fs::write(dir.path().join("test_batch.bin"), cifar_record(0, 3)).unwrap();
    let train = read_cifar10(dir.path(), Split::Train).unwrap();
    assert_eq!((train.len, train.channels, train.height), (10, 3, 32));
    assert_eq!(&train.labels.as_ref().unwrap()[..2], &[3, 9]);
    // Planes are R, G, B, each 32x32 row-major, exactly as in the file.
    assert_eq!(train.image(1), &cifar_record(9, 7)[1..]);
    let test = read_cifar10(dir.path(), Split::Test).unwrap();
    assert_eq!(test.len, 1);
    // A single file works too; a truncated one is an error naming it.
    let one = read_cifar10(&dir.path().join("test_batch.bin"), Split::Train).unwrap();
    assert_eq!(one.len, 1);
    let bad = dir.path().join("bad.bin");
    std::fs::write(&bad, &batch[..5000]).unwrap();
    let e = read_cifar10(&bad, Split::Train).unwrap_err().to_string();
    assert!(e.contains("bad.bin") && e.contains("3073-byte"), "{e}");
    let mut wrong = cifar_record(12, 1);
    wrong.extend(cifar_record(1, 1));
    std::fs::write(&bad, wrong).unwrap();
    let e = read_cifar10(&bad, Split::Train).unwrap_err().to_string();
    assert!(e.contains("label 12"), "{e}");
    // RGB to grayscale conversion for a 1-channel genome.
    let gray = train.to_spec(1, 32).unwrap();
    assert_eq!(gray.channels, 1);
}

fn write_png(path: &Path, w: u32, h: u32, rgb: bool) {
    if rgb {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([x as u8 * 10, y as u8 * 10, 200]))
            .save(path)
            .unwrap();
    } else {
        image::GrayImage::from_fn(w, h, |x, y| image::Luma([(x + y) as u8 * 5]))
            .save(path)
            .unwrap();
    }
}

#[test]
fn image_folder_reader() {
    let dir = tempfile::tempdir().unwrap();
    write_png(&dir.path().join("b.png"), 12, 12, true);
    write_png(&dir.path().join("a.png"), 12, 12, true);
    std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
    let d = diffnas::data::read_image_folder(dir.path()).unwrap();
    assert_eq!((d.len, d.channels, d.height, d.width), (2, 3, 12, 12));
    // Channel-first: the blue plane is constant 200.
    assert!(d.image(0)[2 * 144..].iter().all(|&p| p == 200));
    // Resize to 16 (12 -> 16 pads by 2 on each side) and to 8 (bilinear).
    assert_eq!(d.to_spec(3, 16).unwrap().height, 16);
    assert_eq!(d.to_spec(3, 8).unwrap().pixels.len(), 2 * 3 * 64);
    // Mixed sizes and undecodable files are errors naming the file.
    write_png(&dir.path().join("c.png"), 10, 12, true);
    let e = diffnas::data::read_image_folder(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("c.png") && e.contains("10x12"), "{e}");
    std::fs::remove_file(dir.path().join("c.png")).unwrap();
    std::fs::write(dir.path().join("d.png"), b"not a png").unwrap();
    let e = diffnas::data::read_image_folder(dir.path())
        .unwrap_err()
        .to_string();
    assert!(e.contains("d.png") && e.contains("cannot decode"), "{e}");
    let empty = tempfile::tempdir().unwrap();
    assert!(diffnas::data::read_image_folder(empty.path()).is_err());
}

#[test]
fn batches_are_a_pure_function_of_seed_and_step() {
    let mut a = Batcher::new(5, 4, 10);
    let mut b = Batcher::new(5, 4, 10);
    // Steps 0..5 cover two epochs of 10 images.
    let seq: Vec<Vec<usize>> = (0..5).map(|s| a.indices(s)).collect();
    let mut epoch0: Vec<usize> = seq.concat()[..10].to_vec();
    epoch0.sort();
    assert_eq!(
        epoch0,
        (0..10).collect::<Vec<_>>(),
        "an epoch visits every image once"
    );
    // Asking out of order (as a resumed run does) gives the same batches.
    assert_eq!(b.indices(3), seq[3]);
    assert_eq!(b.indices(0), seq[0]);
    assert_ne!(Batcher::new(6, 4, 10).indices(0), seq[0]);
}

#[test]
fn batch_tensor_scaling() {
    let d = Dataset {
        name: "t".into(),
        pixels: vec![0, 255, 127, 128],
        labels: None,
        len: 1,
        channels: 1,
        height: 2,
        width: 2,
    };
    let t = d.batch(&[0], &burn::tensor::Device::flex());
    let v = crate::common::to_vec(t);
    assert_eq!(v[0], -1.0);
    assert_eq!(v[1], 1.0);
    assert!((v[2] + v[3]).abs() < 1e-2);
}
