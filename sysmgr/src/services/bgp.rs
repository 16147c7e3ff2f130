//! `show bgp summary`, `show bgp neighbors`, `show bgp ipv4 unicast` (NX-OS layout).

use ::bgp::proto::{NeighborRow, RouteRow, Summary};

fn updown(s: u64) -> String {
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

pub fn summary(s: &Summary) -> String {
    let mut o = format!(
        "BGP summary information for VRF default, address family IPv4 Unicast\n\
         BGP router identifier {}, local AS number {}\n\
         {} network entries in the Loc-RIB\n\n\
         {:<16}{:>3}{:>11}{:>9}{:>9}{:>10}  {}\n",
        s.router_id,
        s.local_as,
        s.loc_rib_prefixes,
        "Neighbor",
        "V",
        "AS",
        "MsgRcvd",
        "MsgSent",
        "Up/Down",
        "State/PfxRcd"
    );
    for n in &s.neighbors {
        let st = if n.state == "Established" {
            n.prefixes_received.to_string()
        } else {
            n.state.clone()
        };
        o += &format!(
            "{:<16}{:>3}{:>11}{:>9}{:>9}{:>10}  {}\n",
            n.addr,
            4,
            n.remote_as,
            n.msgs_in,
            n.msgs_out,
            updown(n.up_secs),
            st
        );
    }
    o
}

pub fn neighbors(rows: &[NeighborRow]) -> String {
    let mut o = String::new();
    for n in rows {
        o += &format!(
            "BGP neighbor is {}, remote AS {}, {} link\n\
             \x20 BGP state = {}, for {}, {} flaps\n\
             \x20 Peer router id {}, negotiated hold time {} s\n\
             \x20 Messages: {} received, {} sent; {} prefixes received; End-of-RIB {}\n\n",
            n.addr,
            n.remote_as,
            "external",
            n.state,
            updown(n.up_secs),
            n.flaps,
            n.router_id
                .map(|r| r.to_string())
                .unwrap_or_else(|| "-".into()),
            n.hold_time,
            n.msgs_in,
            n.msgs_out,
            n.prefixes_received,
            if n.end_of_rib_received {
                "received"
            } else {
                "not received"
            },
        );
    }
    if rows.is_empty() {
        o += "No such neighbor.\n";
    }
    o
}

pub fn routes(rows: &[RouteRow]) -> String {
    let mut o = String::from(
        "BGP routing table, IPv4 Unicast\nStatus: * valid, > best, m multipath; Origin: i IGP, e EGP, ? incomplete\n\n   Network            Next Hop          LocPrf    Metric  Path\n",
    );
    for r in rows {
        for (i, p) in r.paths.iter().enumerate() {
            let mark = match (p.selected, i) {
                (true, 0) => "*>",
                (true, _) => "*m",
                _ => "* ",
            };
            let path: Vec<String> = p.as_path.iter().map(|a| a.to_string()).collect();
            o += &format!(
                "{mark} {:<19}{:<18}{:>6}{:>10}  {} {}\n",
                if i == 0 {
                    r.prefix.to_string()
                } else {
                    String::new()
                },
                p.next_hop,
                p.local_pref.map(|x| x.to_string()).unwrap_or_default(),
                p.med.map(|x| x.to_string()).unwrap_or_default(),
                path.join(" "),
                match p.origin {
                    0 => "i",
                    1 => "e",
                    _ => "?",
                }
            );
        }
    }
    o
}
