//! The `ember` command: `ember run` boots a kernel, `ember smoke`
//! smoke-tests one, `ember serve` serves Firecracker's API for one,
//! `ember restore` carries on a VM from a snapshot. Flags become the library's configuration ([`args`],
//! [`parse`]); everything else is the library's.

mod args;
mod logger;
mod parse;
mod serve;

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use clap::Parser;
use ember::{SharedWriter, Smoke, SmokeError, Verdict, Vm, VmExit};

use args::{Cli, Command, RestoreArgs, RunArgs, SmokeArgs};

/// Exit status for a usage error (a bad flag or value).
const EXIT_USAGE: u8 = 2;
/// Exit status for a run-time failure.
const EXIT_FAILURE: u8 = 1;

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    match cli.command {
        Command::Run(a) => run(a),
        Command::Smoke(a) => smoke(a),
        Command::Serve(a) => serve::serve(a),
        Command::Restore(a) => restore(a),
    }
}

/// `ember restore`.
fn restore(args: RestoreArgs) -> ExitCode {
    logger::init(args.log_level);
    ember::restore_terminal_on_fatal_signals();
    let exit = match Vm::restore(args.to_restore_config()).and_then(|vm| vm.run()) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    report(&exit);
    ExitCode::from(exit.status() as u8)
}

/// Prints an error the way every ember error is printed, and picks the
/// exit status.
fn fail(e: &ember::Error) -> ExitCode {
    eprintln!("ember: error: {e}");
    ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_FAILURE })
}

/// `ember run`.
fn run(args: RunArgs) -> ExitCode {
    logger::init(args.log_level);
    ember::restore_terminal_on_fatal_signals();
    let config = match &args.config_file {
        Some(path) => match config_from_file(path) {
            Ok((mut c, logger)) => {
                if let Some(Err(e)) = logger.as_ref().map(serve::apply_logger) {
                    return fail_with(&e);
                }
                args.apply_host_flags(&mut c);
                c
            }
            Err(e) => {
                eprintln!("ember: error: config file {}: {e}", path.display());
                return ExitCode::from(EXIT_USAGE);
            }
        },
        None => args.to_config(),
    };
    let exit = match Vm::new(config).and_then(|vm| vm.run()) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    report(&exit);
    ExitCode::from(exit.status() as u8)
}

/// Reads a Firecracker config file: the VM and the logger settings.
fn config_from_file(path: &std::path::Path) -> Result<(ember::VmConfig, Option<ember::api::LoggerSettings>), String> {
    let json = std::fs::read(path).map_err(|e| e.to_string())?;
    let file = ember::api::parse_config_file(&json).map_err(|e| e.to_string())?;
    let config = file.vm_config().map_err(|e| e.to_string())?;
    Ok((config, file.logger().cloned()))
}

fn fail_with(message: &str) -> ExitCode {
    eprintln!("ember: error: {message}");
    ExitCode::from(EXIT_FAILURE)
}

/// Says how the VM ended: crashes always, clean ends at info level.
fn report(exit: &VmExit) {
    if exit.is_crash() {
        eprintln!("ember: guest crashed: {exit}");
    } else {
        log::info!("VM ended: {exit}");
    }
}

/// `ember smoke`.
fn smoke(args: SmokeArgs) -> ExitCode {
    let ember_failed = ExitCode::from(Smoke::EXIT_EMBER as u8);
    logger::init(args.log_level);
    // The JUnit file is opened before the VM starts: with seccomp on, this
    // thread cannot open files later.
    let mut junit = match &args.junit {
        Some(j) => match std::fs::File::create(j) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("ember smoke: error: cannot write {}: {e}", j.display());
                return ember_failed;
            }
        },
        None => None,
    };
    let out: SharedWriter = Arc::new(Mutex::new(std::io::stdout()));
    let err: SharedWriter = Arc::new(Mutex::new(std::io::stderr()));
    let mut smoke = args.to_smoke().command_output(out.clone(), err);
    if args.console_log.is_none() {
        smoke = smoke.output(out);
    }
    match args.root_plan() {
        Ok(Some(plan)) => smoke = smoke.root_share(plan),
        Ok(None) => {}
        Err(e) => {
            eprintln!("ember smoke: error: the current directory: {e}");
            return ember_failed;
        }
    }
    let report = match smoke.run() {
        Ok(r) => r,
        Err(e) => {
            let hint = if matches!(e, SmokeError::Busybox(_)) { " (--busybox PATH)" } else { "" };
            eprintln!("ember smoke: error: {e}{hint}");
            return ember_failed;
        }
    };
    if matches!(report.verdict, Verdict::Timeout) {
        eprintln!("ember smoke: last console lines:");
        for l in report.last_lines(20) {
            eprintln!("  | {l}");
        }
    }
    if let (Some(f), Some(j)) = (junit.as_mut(), &args.junit) {
        if let Err(e) = f.write_all(report.junit_xml().as_bytes()) {
            eprintln!("ember smoke: error: cannot write {}: {e}", j.display());
            return ember_failed;
        }
    }
    eprintln!("{}", report.summary());
    ExitCode::from(report.exit_status() as u8)
}
