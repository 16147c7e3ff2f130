//! The `bgp` service binary: `bgp --config FILE`, run by sysmgr.

use std::process::ExitCode;

fn main() -> ExitCode {
    let Some(Some(config)) = mts::service::config_arg("bgp", true) else {
        return ExitCode::from(2);
    };
    let opts = bgp::instance::Options { config };
    // Two threads: the sessions' readers, the FIB and checkpoint writers run beside the owner
    // loop, so a full-table feed is decoded, checkpointed and sent to the FIB in parallel.
    mts::service::run_on("bgp", 2, async move {
        bgp::instance::Instance::start(&opts).await?.run().await
    })
}
