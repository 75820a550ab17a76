//! The CIFAR-10 binary version (Krizhevsky 2009): records of 1 label byte + 3072 pixel bytes
//! (1024 red, 1024 green, 1024 blue, each 32x32 row-major), five training batches and one test
//! batch.

use super::{DataError, Dataset, Split};
use std::path::{Path, PathBuf};

const RECORD: usize = 1 + 3 * 32 * 32;

fn files(path: &Path, split: Split) -> Result<Vec<PathBuf>, DataError> {
    if path.is_file() {
        return Ok(vec![path.to_path_buf()]);
    }
    let names: Vec<String> = match split {
        Split::Train => (1..=5).map(|i| format!("data_batch_{i}.bin")).collect(),
        Split::Test => vec!["test_batch.bin".into()],
    };
    // Accept both DIR and DIR/cifar-10-batches-bin.
    for dir in [path.to_path_buf(), path.join("cifar-10-batches-bin")] {
        let found: Vec<PathBuf> = names
            .iter()
            .map(|n| dir.join(n))
            .filter(|p| p.is_file())
            .collect();
        if !found.is_empty() {
            return Ok(found);
        }
    }
    Err(DataError::NotFound {
        what: format!("CIFAR-10 {}", names.join(", ")),
        searched: vec![path.to_path_buf(), path.join("cifar-10-batches-bin")],
    })
}

/// Read CIFAR-10 from a folder (the split's batch files) or from a single batch file.
pub fn read_cifar10(path: &Path, split: Split) -> Result<Dataset, DataError> {
    let mut pixels = Vec::new();
    let mut labels = Vec::new();
    for f in files(path, split)? {
        let bytes = std::fs::read(&f).map_err(|e| DataError::io(&f, e))?;
        if bytes.is_empty() || bytes.len() % RECORD != 0 {
            return Err(DataError::format(
                &f,
                format!(
                    "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated or not a CIFAR-10 batch)",
                    bytes.len()
                ),
            ));
        }
        for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
            if rec[0] > 9 {
                return Err(DataError::format(
                    &f,
                    format!(
                        "record {i} has label {} (CIFAR-10 labels are 0..=9)",
                        rec[0]
                    ),
                ));
            }
            labels.push(rec[0]);
            pixels.extend_from_slice(&rec[1..]);
        }
    }
    Ok(Dataset {
        name: "cifar10".into(),
        len: labels.len(),
        pixels,
        labels: Some(labels),
        channels: 3,
        height: 32,
        width: 32,
    })
}
