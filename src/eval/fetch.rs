//! Resumable, verified downloads (the Inception weights) over reqwest.
//!
//! Bytes go to `DEST.part`. A later attempt asks the server for the rest with a `Range` header
//! and appends when it answers 206 (starting over on 200). When the body is complete the whole
//! file's SHA-256 must start with the expected prefix before it is renamed to `DEST`; a file
//! with the wrong hash is deleted, so the next attempt starts clean.

use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where pytorch-fid publishes its Inception weights.
pub const INCEPTION_URL: &str = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth";

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(
        "cannot reach {url}: {message}\n  (offline? download the file on another machine and copy it to {dest}, \
         or pass its path with --inception)"
    )]
    Offline {
        url: String,
        dest: PathBuf,
        message: String,
    },
    #[error("{url}: server answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error(
        "{url}: transfer interrupted after {bytes} bytes ({message}); run the same command again to resume"
    )]
    Interrupted {
        url: String,
        bytes: u64,
        message: String,
    },
    #[error(
        "{url}: SHA-256 {found} does not start with the expected {expected}; the download was deleted"
    )]
    Hash {
        url: String,
        expected: String,
        found: String,
    },
    #[error("{path}: {message}")]
    Io { path: PathBuf, message: String },
    #[error(
        "{} exists but its SHA-256 {found} does not start with {expected}; remove it and fetch \
         again",
        path.display()
    )]
    Occupied {
        path: PathBuf,
        expected: String,
        found: String,
    },
}

impl FetchError {
    /// Whether the user's files are in the way (as opposed to a failure).
    pub fn is_bad_input(&self) -> bool {
        matches!(self, FetchError::Occupied { .. })
    }
}

/// What [`fetch`] did, with the file's full SHA-256.
#[derive(Debug, Clone, PartialEq)]
pub enum Fetched {
    AlreadyThere(String),
    Downloaded(String),
}

/// [`download`], unless `dest` is already there with the expected hash; a `dest` with another
/// hash is left alone and refused.
pub fn fetch(
    url: &str,
    dest: &Path,
    sha256_prefix: &str,
    timeout: Duration,
    on_progress: Progress<'_>,
) -> Result<Fetched, FetchError> {
    if dest.is_file() {
        let found = crate::eval::extract::sha256_file(dest).map_err(|e| FetchError::Io {
            path: dest.to_path_buf(),
            message: e.to_string(),
        })?;
        if found.starts_with(sha256_prefix) {
            return Ok(Fetched::AlreadyThere(found));
        }
        return Err(FetchError::Occupied {
            path: dest.to_path_buf(),
            expected: sha256_prefix.into(),
            found,
        });
    }
    download(url, dest, sha256_prefix, timeout, on_progress).map(Fetched::Downloaded)
}

/// Progress of a download: bytes on disk so far and the total when the server said.
pub type Progress<'a> = &'a mut dyn FnMut(u64, Option<u64>);

/// `DEST` -> `DEST.part`.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut s = dest.as_os_str().to_owned();
    s.push(".part");
    PathBuf::from(s)
}

/// Download `url` to `dest`, resuming a previous partial download, and verify that the file's
/// SHA-256 (hex) starts with `sha256_prefix`. Returns the full hash.
pub fn download(
    url: &str,
    dest: &Path,
    sha256_prefix: &str,
    timeout: Duration,
    on_progress: Progress<'_>,
) -> Result<String, FetchError> {
    let io = |p: &Path, e: std::io::Error| FetchError::Io {
        path: p.to_path_buf(),
        message: e.to_string(),
    };
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    let part = part_path(dest);
    let have = std::fs::metadata(&part).map(|m| m.len()).unwrap_or(0);
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(timeout)
        .timeout(None)
        .build()
        .map_err(|e| FetchError::Offline {
            url: url.into(),
            dest: dest.into(),
            message: e.to_string(),
        })?;
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req.send().map_err(|e| FetchError::Offline {
        url: url.into(),
        dest: dest.into(),
        message: source_chain(&e),
    })?;
    let status = resp.status().as_u16();
    let (mut file, mut done, total) = match status {
        206 if have > 0 => {
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(&part)
                .map_err(|e| io(&part, e))?;
            (f, have, resp.content_length().map(|l| l + have))
        }
        200 => {
            let f = std::fs::File::create(&part).map_err(|e| io(&part, e))?;
            (f, 0, resp.content_length())
        }
        416 if have > 0 => {
            // The part file is already as long as the resource: go straight to the check.
            let f = std::fs::OpenOptions::new()
                .append(true)
                .open(&part)
                .map_err(|e| io(&part, e))?;
            (f, have, Some(have))
        }
        s => {
            return Err(FetchError::Status {
                url: url.into(),
                status: s,
            });
        }
    };
    on_progress(done, total);
    let mut buf = vec![0u8; 1 << 16];
    if status != 416 {
        loop {
            let k = match resp.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => k,
                Err(e) => {
                    let _ = file.flush();
                    return Err(FetchError::Interrupted {
                        url: url.into(),
                        bytes: done,
                        message: e.to_string(),
                    });
                }
            };
            file.write_all(&buf[..k]).map_err(|e| io(&part, e))?;
            done += k as u64;
            on_progress(done, total);
        }
    }
    file.sync_all().map_err(|e| io(&part, e))?;
    drop(file);
    if let Some(t) = total
        && done < t
    {
        return Err(FetchError::Interrupted {
            url: url.into(),
            bytes: done,
            message: format!("expected {t} bytes"),
        });
    }
    let mut h = Sha256::new();
    std::io::copy(
        &mut std::fs::File::open(&part).map_err(|e| io(&part, e))?,
        &mut h,
    )
    .map_err(|e| io(&part, e))?;
    let found = format!("{:x}", h.finalize());
    if !found.starts_with(&sha256_prefix.to_ascii_lowercase()) {
        let _ = std::fs::remove_file(&part);
        return Err(FetchError::Hash {
            url: url.into(),
            expected: sha256_prefix.into(),
            found,
        });
    }
    std::fs::rename(&part, dest).map_err(|e| io(dest, e))?;
    Ok(found)
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
