//! The `ember` command; all of it lives in [`ember::cli`].

fn main() -> std::process::ExitCode {
    ember::cli::main()
}
