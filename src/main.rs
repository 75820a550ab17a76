//! The `diffnas` command line: parse, run, map errors to exit codes.

fn main() {
    std::process::exit(diffnas::cli::main());
}
