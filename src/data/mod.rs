//! Datasets: IDX (MNIST / Fashion-MNIST, raw or `.gz`), CIFAR-10 binary batches and folders of
//! PNG/JPEG images, held in memory as 8-bit CHW; conversion to a genome's image spec (pad or
//! resize, channel conversion); deterministic shuffled batches as a pure function of
//! (seed, step) so a resumed run sees exactly the batches it would have seen.

mod batch;
mod cifar;
mod folder;
mod idx;

pub use batch::Batcher;
pub use cifar::read_cifar10;
pub use folder::read_image_folder;
pub use idx::{read_idx_images, read_idx_labels};

use std::path::{Path, PathBuf};

/// Where Debian's `dataset-fashion-mnist` package installs the data.
pub const DEBIAN_FASHION_MNIST: &str = "/usr/share/datasets/fashion-mnist";

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
    #[error("{what} not found; looked in: {}", .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))]
    NotFound {
        what: String,
        searched: Vec<PathBuf>,
    },
    #[error("{0}")]
    Invalid(String),
}

impl DataError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        DataError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
    pub(crate) fn format(path: &Path, message: impl Into<String>) -> Self {
        DataError::Format {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }
}

/// An in-memory image dataset, 8-bit, `[N, C, H, W]` row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    pub name: String,
    pub pixels: Vec<u8>,
    pub labels: Option<Vec<u8>>,
    pub len: usize,
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

/// Train or test split (image folders have only one).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Split {
    Train,
    Test,
}

impl Split {
    /// `train` or `test`, as in file names and reports.
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Test => "test",
        }
    }
}

/// Where a dataset comes from, as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", content = "path", rename_all = "kebab-case")]
pub enum DataSource {
    /// Fashion-MNIST IDX files in a folder (None: the usual places).
    FashionMnist(Option<PathBuf>),
    /// MNIST IDX files in a folder.
    Mnist(PathBuf),
    /// CIFAR-10 binary version: a folder with `data_batch_*.bin` / `test_batch.bin`, or one file.
    Cifar10(PathBuf),
    /// A folder of PNG/JPEG images (one split).
    Folder(PathBuf),
}

impl std::str::FromStr for DataSource {
    type Err = String;
    /// `fashion-mnist`, `fashion-mnist:DIR`, `mnist:DIR`, `cifar10:PATH`, `folder:DIR`.
    fn from_str(s: &str) -> Result<Self, String> {
        let (kind, path) = match s.split_once(':') {
            Some((k, p)) => (k, Some(PathBuf::from(p))),
            None => (s, None),
        };
        match (kind, path) {
            ("fashion-mnist", p) => Ok(DataSource::FashionMnist(p)),
            ("mnist", Some(p)) => Ok(DataSource::Mnist(p)),
            ("cifar10", Some(p)) => Ok(DataSource::Cifar10(p)),
            ("folder", Some(p)) => Ok(DataSource::Folder(p)),
            ("mnist" | "cifar10" | "folder", None) => {
                Err(format!("data source {s:?} needs a path: {s}:PATH"))
            }
            _ => Err(format!(
                "unknown data source {s:?}: expected fashion-mnist[:DIR], mnist:DIR, cifar10:PATH or folder:DIR"
            )),
        }
    }
}

impl std::fmt::Display for DataSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DataSource::FashionMnist(None) => write!(f, "fashion-mnist"),
            DataSource::FashionMnist(Some(p)) => write!(f, "fashion-mnist:{}", p.display()),
            DataSource::Mnist(p) => write!(f, "mnist:{}", p.display()),
            DataSource::Cifar10(p) => write!(f, "cifar10:{}", p.display()),
            DataSource::Folder(p) => write!(f, "folder:{}", p.display()),
        }
    }
}

/// Find an IDX file by stem in `dir`, raw or gzipped.
fn find_idx(dir: &Path, stem: &str) -> Option<PathBuf> {
    [format!("{stem}.gz"), stem.to_string()]
        .into_iter()
        .map(|n| dir.join(n))
        .find(|p| p.is_file())
}

fn idx_dataset(name: &str, dirs: &[PathBuf], split: Split) -> Result<Dataset, DataError> {
    let prefix = match split {
        Split::Train => "train",
        Split::Test => "t10k",
    };
    let stem = format!("{prefix}-images-idx3-ubyte");
    for dir in dirs {
        if let Some(images) = find_idx(dir, &stem) {
            let (pixels, len, h, w) = read_idx_images(&images)?;
            let labels = match find_idx(dir, &format!("{prefix}-labels-idx1-ubyte")) {
                Some(p) => {
                    let l = read_idx_labels(&p)?;
                    if l.len() != len {
                        return Err(DataError::format(
                            &p,
                            format!("has {} labels but the image file has {len} images", l.len()),
                        ));
                    }
                    Some(l)
                }
                None => None,
            };
            return Ok(Dataset {
                name: name.to_string(),
                pixels,
                labels,
                len,
                channels: 1,
                height: h,
                width: w,
            });
        }
    }
    Err(DataError::NotFound {
        what: format!("{name} {stem}[.gz]"),
        searched: dirs.to_vec(),
    })
}

impl DataSource {
    /// Folders searched for Fashion-MNIST when no path is given: `$DIFFNAS_FASHION_MNIST`, then
    /// Debian's package location.
    pub fn fashion_mnist_dirs() -> Vec<PathBuf> {
        let mut v = Vec::new();
        if let Ok(p) = std::env::var("DIFFNAS_FASHION_MNIST") {
            v.push(PathBuf::from(p));
        }
        v.push(PathBuf::from(DEBIAN_FASHION_MNIST));
        v
    }

    pub fn load(&self, split: Split) -> Result<Dataset, DataError> {
        match self {
            DataSource::FashionMnist(p) => {
                let dirs = match p {
                    Some(p) => vec![p.clone()],
                    None => Self::fashion_mnist_dirs(),
                };
                idx_dataset("fashion-mnist", &dirs, split)
            }
            DataSource::Mnist(p) => idx_dataset("mnist", std::slice::from_ref(p), split),
            DataSource::Cifar10(p) => read_cifar10(p, split),
            DataSource::Folder(p) => read_image_folder(p),
        }
    }

    /// A split cut to its first `max_images` (None: all) and converted to `channels` x
    /// `size` x `size` (see [`Dataset::to_spec`]): what training on a genome needs.
    pub fn load_for(
        &self,
        split: Split,
        max_images: Option<usize>,
        channels: usize,
        size: usize,
    ) -> Result<Dataset, DataError> {
        let mut d = self.load(split)?;
        if let Some(n) = max_images {
            d.truncate(n);
        }
        d.to_spec(channels, size)
    }
}

impl Dataset {
    /// Image `i` as CHW bytes.
    pub fn image(&self, i: usize) -> &[u8] {
        let per = self.channels * self.height * self.width;
        &self.pixels[i * per..(i + 1) * per]
    }

    /// Keep the first `n` images (for quick runs and tests).
    pub fn truncate(&mut self, n: usize) {
        if n < self.len {
            let per = self.channels * self.height * self.width;
            self.pixels.truncate(n * per);
            if let Some(l) = &mut self.labels {
                l.truncate(n);
            }
            self.len = n;
        }
    }

    /// Convert to `channels` x `size` x `size`: grayscale <-> RGB conversion, then zero-padding
    /// (centred) when the images are smaller by an even amount, else a bilinear resize.
    pub fn to_spec(&self, channels: usize, size: usize) -> Result<Dataset, DataError> {
        if self.height == size && self.width == size && self.channels == channels {
            return Ok(self.clone());
        }
        let (h, w) = (self.height, self.width);
        let mut out = Vec::with_capacity(self.len * channels * size * size);
        for i in 0..self.len {
            let img = self.image(i);
            let conv = convert_channels(img, self.channels, channels, h * w).ok_or_else(|| {
                DataError::Invalid(format!(
                    "cannot convert {} images from {} to {channels} channels",
                    self.name, self.channels
                ))
            })?;
            for c in 0..channels {
                let plane = &conv[c * h * w..(c + 1) * h * w];
                out.extend(fit_plane(plane, h, w, size));
            }
        }
        Ok(Dataset {
            name: self.name.clone(),
            pixels: out,
            labels: self.labels.clone(),
            len: self.len,
            channels,
            height: size,
            width: size,
        })
    }
}

fn convert_channels(img: &[u8], from: usize, to: usize, hw: usize) -> Option<Vec<u8>> {
    match (from, to) {
        (a, b) if a == b => Some(img.to_vec()),
        (1, 3) => Some([img, img, img].concat()),
        (3, 1) => Some(
            (0..hw)
                .map(|p| {
                    let (r, g, b) = (img[p] as f32, img[hw + p] as f32, img[2 * hw + p] as f32);
                    (0.299 * r + 0.587 * g + 0.114 * b).round() as u8
                })
                .collect(),
        ),
        _ => None,
    }
}

/// One plane `h x w` -> `size x size`: centred zero padding when it fits evenly, else resize.
fn fit_plane(plane: &[u8], h: usize, w: usize, size: usize) -> Vec<u8> {
    if h <= size && w <= size && (size - h).is_multiple_of(2) && (size - w).is_multiple_of(2) {
        let (top, left) = ((size - h) / 2, (size - w) / 2);
        let mut out = vec![0u8; size * size];
        for y in 0..h {
            out[(top + y) * size + left..(top + y) * size + left + w]
                .copy_from_slice(&plane[y * w..(y + 1) * w]);
        }
        return out;
    }
    let img = image::GrayImage::from_raw(w as u32, h as u32, plane.to_vec())
        .expect("plane length is h * w");
    image::imageops::resize(
        &img,
        size as u32,
        size as u32,
        image::imageops::FilterType::Triangle,
    )
    .into_raw()
}
