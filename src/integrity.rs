//! Warnings about files loaded without a checksum to check them against: weights, statistics
//! and converted extractors written before diffnas recorded SHA-256s still load, and the user
//! hears once per file and process that nothing vouched for their bytes.
//!
//! The library has no terminal: a program installs a sink (`set_sink`, the CLI prints to
//! stderr); `unchecked_files` lists every file warned about either way.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

type Sink = Box<dyn Fn(&str) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();
static SEEN: Mutex<BTreeSet<PathBuf>> = Mutex::new(BTreeSet::new());

/// Send every later warning to `sink` (the first call wins).
pub fn set_sink(sink: impl Fn(&str) + Send + Sync + 'static) {
    let _ = SINK.set(Box::new(sink));
}

/// `path` was loaded without a checksum: warn, once per file in this process.
pub fn unchecked(path: &Path) {
    let first = SEEN
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(path.to_path_buf());
    if !first {
        return;
    }
    let msg = format!(
        "{}: no checksum (written before diffnas recorded them): loaded unchecked",
        path.display()
    );
    if let Some(sink) = SINK.get() {
        sink(&msg);
    }
}

/// Every file this process loaded unchecked so far.
pub fn unchecked_files() -> Vec<PathBuf> {
    let seen = SEEN.lock().unwrap_or_else(|e| e.into_inner());
    seen.iter().cloned().collect()
}
