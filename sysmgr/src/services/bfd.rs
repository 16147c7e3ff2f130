//! `show bfd neighbors [details]`.

use bfd::proto::Neighbor;

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn hms(ms: u64) -> String {
    let s = ms / 1000;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

fn addr(a: Option<std::net::Ipv4Addr>) -> String {
    a.map(|a| a.to_string()).unwrap_or_else(|| "-".into())
}

pub fn table(rows: &[Neighbor], now: u64) -> String {
    let mut o = format!(
        "{:<16}{:<16}{:<23}{:<10}{:<15}{:<10}{:<12}{:<10}{}\n",
        "OurAddr",
        "NeighAddr",
        "LD/RD",
        "RH/RS",
        "Holdown(mult)",
        "State",
        "Int",
        "Uptime",
        "Flaps"
    );
    for n in rows {
        o += &format!(
            "{:<16}{:<16}{:<23}{:<10}{:<15}{:<10}{:<12}{:<10}{}\n",
            addr(n.local),
            n.peer,
            format!("{}/{}", n.local_disc, n.remote_disc),
            n.remote_state.word(),
            format!("{}({})", n.detect_time_us / 1000, n.remote_detect_mult),
            n.state.word(),
            n.interface.as_deref().unwrap_or("-"),
            if n.state == bfd::packet::State::Up {
                hms(now.saturating_sub(n.since_ms))
            } else {
                "-".into()
            },
            n.flaps,
        );
    }
    o
}

pub fn details(rows: &[Neighbor], now: u64) -> String {
    let mut o = String::new();
    for n in rows {
        let ms = |us: u64| format!("{} ms", us / 1000);
        o += &format!(
            "Neighbor {} (interface {}, source {}:{}), requested by {}\n\
             \x20 Local discr {}, remote discr {}\n\
             \x20 Session state {}, remote state {}, last diagnostic: {}\n\
             \x20 {} for {}, {} flaps\n\
             \x20 Local timers: desired min tx {}, required min rx {}, multiplier {}\n\
             \x20 Remote timers: desired min tx {}, required min rx {}, multiplier {}\n\
             \x20 Negotiated tx interval {}, detection time {}{}\n\
             \x20 Packets: rx {}, tx {}, polls sent {}, finals sent {}\n\n",
            n.peer,
            n.interface.as_deref().unwrap_or("any"),
            addr(n.local),
            n.source_port,
            n.owner,
            n.local_disc,
            n.remote_disc,
            n.state.word(),
            n.remote_state.word(),
            n.diag.word(),
            n.state.word(),
            hms(now.saturating_sub(n.since_ms)),
            n.flaps,
            ms(n.timers.desired_min_tx.into()),
            ms(n.timers.required_min_rx.into()),
            n.timers.detect_mult,
            ms(n.remote_desired_min_tx_us.into()),
            ms(n.remote_min_rx_us.into()),
            n.remote_detect_mult,
            ms(n.tx_interval_us),
            ms(n.detect_time_us),
            if n.poll { ", poll in progress" } else { "" },
            n.counters.rx,
            n.counters.tx,
            n.counters.polls_sent,
            n.counters.finals_sent,
        );
    }
    if rows.is_empty() {
        o += "No BFD sessions.\n";
    }
    o
}
