//! The `fib` service binary: `fib [--config FILE]`, run by sysmgr.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(config) = mts::service::config_arg("fib", false) else {
        return ExitCode::from(2);
    };
    let opts = fib::instance::Options { config };
    // Two threads: the MTS connection's writer sends the next checkpoint while the owner
    // programs the kernel.
    mts::service::run_on("fib", 2, async move {
        fib::instance::Instance::start(&opts).await?.run().await
    })
}
