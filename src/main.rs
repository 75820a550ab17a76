//! The `diffnas` command line: parse, run, map errors to exit codes.

fn main() {
    keep_freed_memory();
    end_quietly_on_closed_pipe();
    std::process::exit(diffnas::cli::main());
}

/// glibc hands every freed block above its mmap threshold (128 KiB, rising to at most 32 MiB as
/// it adapts) back to the kernel. A training or sampling step frees and allocates the same
/// activation and gradient buffers, megabytes each, hundreds of times, so each step would fault
/// every page in again and the kernel would zero it. Serving blocks up to 32 MiB (the largest
/// threshold glibc accepts: half its largest heap) from the heap and never trimming it keeps
/// those pages: the process stays at its peak resident size instead of returning to a lower one
/// between steps. `MALLOC_MMAP_THRESHOLD_` or `MALLOC_TRIM_THRESHOLD_` in the environment take
/// precedence.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let user_set = |v: &str| std::env::var_os(v).is_some();
        if !user_set("MALLOC_MMAP_THRESHOLD_") && !user_set("MALLOC_TRIM_THRESHOLD_") {
            // SAFETY: mallopt only changes glibc's allocation policy; it is called before any
            // other thread exists.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
                libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
            }
        }
    }
}

/// Rust ignores SIGPIPE, so printing into a closed pipe (`diffnas genome list | head -1`)
/// panics in `println!`. A command-line tool ends quietly there instead, as others do.
fn end_quietly_on_closed_pipe() {
    #[cfg(unix)]
    // SAFETY: restores the default disposition of one signal before any other thread exists.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
