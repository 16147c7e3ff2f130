//! NX-OS-shaped LOG_ERR lines to stderr (through [`crate::selflog`]) and, when `/dev/log`
//! exists, to syslog.

use std::os::unix::net::UnixDatagram;

/// LOG_DAEMON (3) * 8 + LOG_ERR (3).
const PRI_DAEMON_ERR: u8 = 27;

/// Emit `%SYSMGR-<sev>-<MNEMONIC>: <text>` at LOG_ERR.
pub fn err(severity: u8, mnemonic: &str, text: &str) {
    let line = format!("%SYSMGR-{severity}-{mnemonic}: {text}");
    crate::selflog::line(format!("{line}\n").into_bytes());
    // Never wait for a syslog daemon that does not read: the line is on stderr anyway.
    if let Ok(s) = UnixDatagram::unbound()
        && s.set_nonblocking(true).is_ok()
    {
        let msg = format!("<{PRI_DAEMON_ERR}>sysmgr[{}]: {line}", std::process::id());
        let _ = s.send_to(msg.as_bytes(), "/dev/log");
    }
}
