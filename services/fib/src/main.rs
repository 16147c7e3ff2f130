//! The `fib` service binary: `fib [--config FILE]`, run by sysmgr.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(config) = mts::service::config_arg("fib", false) else {
        return ExitCode::from(2);
    };
    let opts = fib::instance::Options { config };
    mts::service::run("fib", async move {
        fib::instance::Instance::start(&opts).await?.run().await
    })
}
