//! Per-thread scratch buffers for the column matrices of the convolutions. Allocating a fresh
//! buffer of a few megabytes per image would cost a page fault per 4 KiB page on every call;
//! each rayon worker keeps its own and grows it to the largest size it has seen.

use std::cell::RefCell;

thread_local! {
    static BUFFERS: RefCell<[Vec<f32>; 3]> =
        const { RefCell::new([Vec::new(), Vec::new(), Vec::new()]) };
    /// The zero-padded image planes of im2col / col2im, used inside the buffers above.
    static PADDED: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with a scratch slice of `n` elements for a padded image (contents unspecified).
pub(crate) fn with_padded<R>(n: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    PADDED.with(|cell| match cell.try_borrow_mut() {
        Ok(mut buf) => {
            grow(&mut buf, n);
            f(&mut buf[..n])
        }
        Err(_) => f(&mut vec![0.0; n]),
    })
}

/// Runs `f` with three scratch slices of `a`, `b` and `c` elements (contents unspecified:
/// callers overwrite what they read). Re-entrant: a nested call on the same thread gets fresh
/// buffers.
pub(crate) fn with3<R>(
    a: usize,
    b: usize,
    c: usize,
    f: impl FnOnce(&mut [f32], &mut [f32], &mut [f32]) -> R,
) -> R {
    BUFFERS.with(|cell| match cell.try_borrow_mut() {
        Ok(mut bufs) => {
            let [x, y, z] = &mut *bufs;
            grow(x, a);
            grow(y, b);
            grow(z, c);
            f(&mut x[..a], &mut y[..b], &mut z[..c])
        }
        Err(_) => f(&mut vec![0.0; a], &mut vec![0.0; b], &mut vec![0.0; c]),
    })
}

/// [`with3`] with two buffers.
pub(crate) fn with2<R>(a: usize, b: usize, f: impl FnOnce(&mut [f32], &mut [f32]) -> R) -> R {
    with3(a, b, 0, |x, y, _| f(x, y))
}

/// [`with3`] with one buffer.
pub(crate) fn with<R>(a: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    with3(a, 0, 0, |x, _, _| f(x))
}

fn grow(v: &mut Vec<f32>, n: usize) {
    if v.len() < n {
        v.resize(n, 0.0);
    }
}
