//! The `bgp` service binary: `bgp --config FILE`, run by sysmgr.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(Some(config)) = mts::service::config_arg("bgp", true) else {
        return ExitCode::from(2);
    };
    let opts = bgp::instance::Options { config };
    mts::service::run("bgp", async move {
        bgp::instance::Instance::start(&opts).await?.run().await
    })
}
