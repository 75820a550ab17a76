//! The IDX format of MNIST and Fashion-MNIST (LeCun et al.): big-endian magic `0x0000_08_NN`
//! (type 0x08 = u8, NN = rank), NN big-endian u32 dimensions, then the data. Files may be gzipped.

use super::DataError;
use std::io::Read;
use std::path::Path;

/// The most a gzipped IDX file may inflate to (MNIST-like sets are under 50 MB): a bound on
/// what a damaged or hostile file can make us allocate.
pub const MAX_INFLATED_BYTES: u64 = 1 << 30;

/// Read a whole file, transparently gunzipping when it starts with the gzip magic.
pub(crate) fn read_maybe_gz(path: &Path) -> Result<Vec<u8>, DataError> {
    let raw = std::fs::read(path).map_err(|e| DataError::io(path, e))?;
    if raw.len() >= 2 && raw[0] == 0x1f && raw[1] == 0x8b {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&raw[..])
            .take(MAX_INFLATED_BYTES + 1)
            .read_to_end(&mut out)
            .map_err(|e| DataError::format(path, format!("corrupt gzip stream: {e}")))?;
        if out.len() as u64 > MAX_INFLATED_BYTES {
            return Err(DataError::format(
                path,
                format!("inflates to more than {MAX_INFLATED_BYTES} bytes: not an IDX file"),
            ));
        }
        Ok(out)
    } else {
        Ok(raw)
    }
}

fn parse(path: &Path, bytes: &[u8], rank: usize) -> Result<(Vec<usize>, usize), DataError> {
    let what = if rank == 3 { "image" } else { "label" };
    if bytes.len() < 4 {
        return Err(DataError::format(
            path,
            format!(
                "truncated: {} bytes, too short for an IDX header",
                bytes.len()
            ),
        ));
    }
    let magic = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
    let want = 0x0000_0800 | rank as u32;
    if magic != want {
        return Err(DataError::format(
            path,
            format!("bad magic number {magic:#010x}; an IDX {what} file starts with {want:#010x}"),
        ));
    }
    let header = 4 + 4 * rank;
    if bytes.len() < header {
        return Err(DataError::format(
            path,
            format!(
                "truncated: the header needs {header} bytes, the file has {}",
                bytes.len()
            ),
        ));
    }
    let dims: Vec<usize> = (0..rank)
        .map(|i| {
            let o = 4 + 4 * i;
            u32::from_be_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) as usize
        })
        .collect();
    // Checked: four u32 dimensions can exceed usize, and a wrapped product could match.
    let Some(expected) = dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)) else {
        return Err(DataError::format(
            path,
            format!("the header's dimensions {dims:?} overflow: not an IDX file"),
        ));
    };
    let have = bytes.len() - header;
    if have != expected {
        return Err(DataError::format(
            path,
            format!(
                "{}: the header says dimensions {dims:?} ({expected} bytes of data) but the file has {have}",
                if have < expected {
                    "truncated"
                } else {
                    "trailing data"
                }
            ),
        ));
    }
    Ok((dims, header))
}

/// Images as `(pixels, count, height, width)`.
pub fn read_idx_images(path: &Path) -> Result<(Vec<u8>, usize, usize, usize), DataError> {
    let bytes = read_maybe_gz(path)?;
    let (dims, header) = parse(path, &bytes, 3)?;
    if dims[1] == 0 || dims[2] == 0 {
        return Err(DataError::format(
            path,
            format!("empty images: dimensions {dims:?}"),
        ));
    }
    Ok((bytes[header..].to_vec(), dims[0], dims[1], dims[2]))
}

/// Labels, one byte each.
pub fn read_idx_labels(path: &Path) -> Result<Vec<u8>, DataError> {
    let bytes = read_maybe_gz(path)?;
    let (_, header) = parse(path, &bytes, 1)?;
    Ok(bytes[header..].to_vec())
}
