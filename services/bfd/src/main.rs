//! The `bfd` service binary: `bfd [--config FILE]`, run by sysmgr.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(config) = mts::service::config_arg("bfd", false) else {
        return ExitCode::from(2);
    };
    let opts = bfd::instance::Options { config };
    mts::service::run("bfd", async move {
        bfd::instance::Instance::start(&opts).await?.run().await
    })
}
