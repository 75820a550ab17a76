//! A folder of PNG/JPEG images (sorted by file name). All images must share one size; they are
//! stored as RGB unless every image is grayscale.

use super::{DataError, Dataset};
use std::path::Path;

pub fn read_image_folder(dir: &Path) -> Result<Dataset, DataError> {
    let entries = std::fs::read_dir(dir).map_err(|e| DataError::io(dir, e))?;
    let mut paths: Vec<_> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
        })
        .collect();
    paths.sort();
    if paths.is_empty() {
        return Err(DataError::NotFound {
            what: "PNG or JPEG images".into(),
            searched: vec![dir.to_path_buf()],
        });
    }
    let mut images = Vec::with_capacity(paths.len());
    for p in &paths {
        let img = image::open(p)
            .map_err(|e| DataError::format(p, format!("cannot decode image: {e}")))?;
        images.push(img);
    }
    let (w, h) = (images[0].width() as usize, images[0].height() as usize);
    let gray = images
        .iter()
        .all(|i| matches!(i.color().channel_count(), 1 | 2));
    let channels = if gray { 1 } else { 3 };
    let mut pixels = Vec::with_capacity(images.len() * channels * w * h);
    for (img, p) in images.iter().zip(&paths) {
        if (img.width() as usize, img.height() as usize) != (w, h) {
            return Err(DataError::format(
                p,
                format!(
                    "is {}x{} but the first image ({}) is {w}x{h}; all images of a folder must share one size",
                    img.width(),
                    img.height(),
                    paths[0].display()
                ),
            ));
        }
        if gray {
            pixels.extend_from_slice(img.to_luma8().as_raw());
        } else {
            let rgb = img.to_rgb8();
            for c in 0..3 {
                pixels.extend(rgb.pixels().map(|px| px[c]));
            }
        }
    }
    Ok(Dataset {
        name: dir
            .file_name()
            .map_or("images".into(), |n| n.to_string_lossy().into_owned()),
        len: images.len(),
        pixels,
        labels: None,
        channels,
        height: h,
        width: w,
    })
}
