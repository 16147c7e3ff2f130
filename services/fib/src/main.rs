//! The `fib` service binary: `fib [--config FILE]`, run by sysmgr.

use std::path::PathBuf;
use std::process::ExitCode;

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    let mut args = std::env::args().skip(1);
    let mut config = None;
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--config", Some(p)) => config = Some(PathBuf::from(p)),
            _ => {
                eprintln!("usage: fib [--config FILE]");
                return ExitCode::from(2);
            }
        }
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fib: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = fib::instance::Options { config };
    let r = rt.block_on(async {
        let inst = fib::instance::Instance::start(&opts).await?;
        inst.run().await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fib: {e}");
            ExitCode::FAILURE
        }
    }
}
