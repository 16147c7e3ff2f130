//! The `sysmgr` binary: the daemon (`sysmgr boot`) and the CLI.

use std::process::ExitCode;

use clap::Parser;
use sysmgr::cli::{self, Cli, Cmd, PolicyCmd};
use sysmgr::supervisor::{BootOptions, Exit};
use sysmgr::{SysmgrError, boot};

fn main() -> ExitCode {
    let args = Cli::parse();
    match &args.cmd {
        Cmd::Boot {
            move_aside_corrupt_db,
        } => run_boot(&args, *move_aside_corrupt_db),
        Cmd::Policy {
            cmd: PolicyCmd::Check { dir },
        } => match sysmgr::config::check_dir(dir) {
            Ok(lab) => {
                println!(
                    "{}: {} service policies valid",
                    dir.display(),
                    lab.services.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        cmd => {
            let socket = match cli::socket_path(&args.config, args.data_dir.as_deref()) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("cannot find the sysmgr socket: {e}");
                    return ExitCode::FAILURE;
                }
            };
            if let Some(show) = sysmgr::services::for_cmd(cmd) {
                return match sysmgr::services::run(&socket, show, args.json) {
                    Ok(text) => {
                        print!("{text}");
                        ExitCode::SUCCESS
                    }
                    Err(e) => {
                        eprintln!("% {e}");
                        ExitCode::FAILURE
                    }
                };
            }
            let Some((req, view)) = cli::request_for(cmd) else {
                return ExitCode::FAILURE;
            };
            match sysmgr::control::request(&socket, &req) {
                Ok(resp) => {
                    print!("{}", cli::render(&resp, view, args.json));
                    ExitCode::SUCCESS
                }
                Err(mts::MtsError::Remote(e)) => {
                    eprintln!("% {e}");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("% cannot reach sysmgr at {}: {e}", socket.display());
                    ExitCode::FAILURE
                }
            }
        }
    }
}

fn run_boot(args: &Cli, move_aside_corrupt_db: bool) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(sysmgr::selflog::Stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    // A panic's message goes straight to stderr: the lines before it first.
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        sysmgr::selflog::flush(std::time::Duration::from_millis(500));
        report(info);
    }));
    let opts = BootOptions {
        config: args.config.clone(),
        data_dir: args.data_dir.clone(),
        move_aside_corrupt_db,
    };
    let ended = boot::boot(opts);
    // What is still queued for stderr, before exit or re-exec (not forever: stderr may be stuck).
    sysmgr::selflog::flush(std::time::Duration::from_secs(2));
    match ended {
        Ok(Exit::Shutdown) => ExitCode::SUCCESS,
        Ok(Exit::Reset) => {
            let err = boot::reexec_reset();
            eprintln!("supervisor reset: re-exec failed: {err}");
            ExitCode::FAILURE
        }
        Err(SysmgrError::Config(e)) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("sysmgr: {e}");
            ExitCode::FAILURE
        }
    }
}
