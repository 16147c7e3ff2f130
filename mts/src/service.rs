//! What every service binary does before and after its own work: log to stderr (sysmgr keeps
//! it in `DATA/logs/NAME.stderr.log`), run on one tokio thread (or a few), turn an error into a message and
//! a failing exit status (which sysmgr records and acts on).

use std::future::Future;
use std::process::ExitCode;

/// Run a service's `main` future; `name` prefixes the error line.
pub fn run<E, Fut>(name: &str, fut: Fut) -> ExitCode
where
    E: std::fmt::Display,
    Fut: Future<Output = Result<(), E>>,
{
    run_on(name, 1, fut)
}

/// As [`run`], with `workers` runtime threads: the `main` future stays on the calling thread,
/// the tasks it spawns (readers, writers) run beside it when `workers` > 1.
pub fn run_on<E, Fut>(name: &str, workers: usize, fut: Fut) -> ExitCode
where
    E: std::fmt::Display,
    Fut: Future<Output = Result<(), E>>,
{
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let built = if workers > 1 {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    };
    let rt = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{name}: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `--config FILE` (optional when `required` is false); `None` on a usage error, already reported.
pub fn config_arg(name: &str, required: bool) -> Option<Option<std::path::PathBuf>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.as_slice() {
        [flag, p] if flag == "--config" => Some(Some(p.into())),
        [] if !required => Some(None),
        _ => {
            let opt = if required {
                "--config FILE"
            } else {
                "[--config FILE]"
            };
            eprintln!("usage: {name} {opt}");
            None
        }
    }
}
