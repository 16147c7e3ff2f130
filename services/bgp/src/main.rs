//! The `bgp` service binary: `bgp --config FILE`, run by sysmgr.

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
    let args: Vec<String> = std::env::args().skip(1).collect();
    let config = match args.as_slice() {
        [flag, p] if flag == "--config" => PathBuf::from(p),
        _ => {
            eprintln!("usage: bgp --config FILE");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bgp: runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let opts = bgp::instance::Options { config };
    let r = rt.block_on(async {
        let inst = bgp::instance::Instance::start(&opts).await?;
        inst.run().await
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bgp: {e}");
            ExitCode::FAILURE
        }
    }
}
