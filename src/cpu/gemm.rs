//! One f32 matrix product, `dst (+)= lhs * rhs`, on the `gemm` crate (the GEMM Burn's `flex`
//! backend itself runs on; it picks AVX-512, AVX2+FMA or SSE kernels at run time and SIMD128 in
//! the browser). Matrices are strided views of slices, so the convolutions can hand it image
//! planes and column buffers without reshaping anything.

/// A read-only `rows x cols` matrix inside `data`: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Clone, Copy)]
pub(crate) struct Mat<'a> {
    pub data: &'a [f32],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a> Mat<'a> {
    /// Column-major: element `(i, j)` at `data[i + j * rows]` (an image plane `[C, P]` read as
    /// `P x C`, a column matrix `[K, P]` read as `P x K`).
    pub fn col_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: 1,
            cs: rows,
        }
    }

    /// Row-major: element `(i, j)` at `data[i * cols + j]`.
    pub fn row_major(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Mat {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
}

/// A writable `rows x cols` matrix: element `(i, j)` is at `ptr + i * rs + j * cs`, all inside
/// `len` elements from `ptr`.
pub(crate) struct MatMut<'a> {
    ptr: *mut f32,
    len: usize,
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
    _borrow: std::marker::PhantomData<&'a mut [f32]>,
}

impl<'a> MatMut<'a> {
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize, rs: usize, cs: usize) -> Self {
        MatMut {
            ptr: data.as_mut_ptr(),
            len: data.len(),
            rows,
            cols,
            rs,
            cs,
            _borrow: std::marker::PhantomData,
        }
    }

    /// A view that other threads write beside at the same time (the output tiles of one image,
    /// interleaved along the channel stride).
    ///
    /// # Safety
    /// `ptr..ptr + len` must stay valid for `'a`, and no other live view or reference may touch
    /// the elements this one addresses (`(i, j)` for `i < rows`, `j < cols`).
    pub unsafe fn from_raw(
        ptr: *mut f32,
        len: usize,
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Self {
        MatMut {
            ptr,
            len,
            rows,
            cols,
            rs,
            cs,
            _borrow: std::marker::PhantomData,
        }
    }
}

fn last_index(rows: usize, cols: usize, rs: usize, cs: usize) -> usize {
    (rows - 1) * rs + (cols - 1) * cs
}

impl Mat<'_> {
    fn check(&self, what: &str) {
        assert!(
            self.rows == 0
                || self.cols == 0
                || last_index(self.rows, self.cols, self.rs, self.cs) < self.data.len(),
            "gemm: {what} view {}x{} (strides {}, {}) overruns its {} elements",
            self.rows,
            self.cols,
            self.rs,
            self.cs,
            self.data.len()
        );
    }
}

/// `dst = lhs * rhs`, or `dst += lhs * rhs` when `accumulate`. Single-threaded when `threads`
/// is 1 (callers parallelise over images themselves, which keeps results independent of the
/// thread count); with more, the `gemm` crate splits the output tiles over rayon's pool (also
/// deterministic: no sum is split).
pub(crate) fn gemm(dst: MatMut<'_>, lhs: Mat<'_>, rhs: Mat<'_>, accumulate: bool, threads: usize) {
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    assert!(
        lhs.rows == m && rhs.rows == k && rhs.cols == n,
        "gemm: {}x{} * {}x{} does not give {m}x{n}",
        lhs.rows,
        lhs.cols,
        rhs.rows,
        rhs.cols
    );
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        last_index(m, n, dst.rs, dst.cs) < dst.len,
        "gemm: dst view {m}x{n} (strides {}, {}) overruns its {} elements",
        dst.rs,
        dst.cs,
        dst.len
    );
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    // SAFETY: inside the view, checked above.
                    unsafe { *dst.ptr.add(i * dst.rs + j * dst.cs) = 0.0 };
                }
            }
        }
        return;
    }
    lhs.check("lhs");
    rhs.check("rhs");
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: every index the product touches was bounds-checked above (the largest index of
    // each view lies inside its buffer and strides are non-negative); `dst` is an exclusive
    // view, so it aliases neither input.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr,
            dst.cs as isize,
            dst.rs as isize,
            accumulate,
            lhs.data.as_ptr(),
            lhs.cs as isize,
            lhs.rs as isize,
            rhs.data.as_ptr(),
            rhs.cs as isize,
            rhs.rs as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
