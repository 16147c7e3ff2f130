//! The two-host arbiter: one etcd key held under a lease (etcd v3's JSON gateway over plain
//! HTTP, `/v3/...`). The active is whoever created the key; its lease keeps it there while the
//! active renews it, and the key goes with the lease when the active dies, stalls or loses its
//! network. The epoch is the etcd revision at which the key was created, so each takeover has
//! a higher one. No consensus of our own: etcd's Raft decides.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::{Value, json};

pub struct Etcd {
    endpoint: String,
    key: String,
    pub ttl: Duration,
    name: String,
}

fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// etcd's JSON gateway writes 64-bit integers as strings.
fn int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.parse().ok())
}

fn err(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::other(msg.into())
}

impl Etcd {
    pub fn new(endpoint: &str, key: &str, ttl: Duration, name: &str) -> Etcd {
        Etcd {
            endpoint: endpoint.to_string(),
            key: key.to_string(),
            ttl,
            name: name.to_string(),
        }
    }

    pub fn describe(&self) -> String {
        format!("etcd http://{} key {}", self.endpoint, self.key)
    }

    fn post(&self, path: &str, body: &Value) -> std::io::Result<Value> {
        let addr = self
            .endpoint
            .parse()
            .map_err(|e| err(format!("etcd endpoint {}: {e}", self.endpoint)))?;
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
        s.set_read_timeout(Some(Duration::from_secs(1)))?;
        s.set_write_timeout(Some(Duration::from_secs(1)))?;
        let b = body.to_string();
        write!(
            s,
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
            self.endpoint,
            b.len()
        )?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp)?;
        let head_end = resp
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| err("etcd: no HTTP header end"))?;
        let status = String::from_utf8_lossy(&resp[..head_end]);
        if !status.starts_with("HTTP/1.1 200") {
            return Err(err(format!(
                "etcd {path}: {}",
                status.lines().next().unwrap_or("")
            )));
        }
        // The body may be chunked (streaming calls): the first JSON value in it.
        let body = &resp[head_end + 4..];
        let at = body
            .iter()
            .position(|&c| c == b'{')
            .ok_or_else(|| err("etcd: no JSON in the answer"))?;
        serde_json::Deserializer::from_slice(&body[at..])
            .into_iter::<Value>()
            .next()
            .ok_or_else(|| err("etcd: empty answer"))?
            .map_err(|e| err(format!("etcd: {e}")))
    }

    /// Who holds the key now: (value, create revision).
    pub fn holder(&self) -> std::io::Result<Option<(String, u64)>> {
        let v = self.post("/v3/kv/range", &json!({"key": b64(self.key.as_bytes())}))?;
        let Some(kv) = v["kvs"].as_array().and_then(|a| a.first()) else {
            return Ok(None);
        };
        let rev = int(&kv["create_revision"]).unwrap_or(0) as u64;
        // The value is base64; only compared with our own name, so compare encoded.
        let val = kv["value"].as_str().unwrap_or("").to_string();
        Ok(Some((val, rev)))
    }

    /// Whether a holder value is us.
    pub fn is_me(&self, value: &str) -> bool {
        value == b64(self.name.as_bytes())
    }

    /// Take the key if nobody holds it: Some((lease, revision)) when we did.
    pub fn try_acquire(&self) -> std::io::Result<Option<(i64, u64)>> {
        if self.holder()?.is_some() {
            return Ok(None);
        }
        // Whole seconds, rounded up: etcd keeps the key at least as long as we count on it.
        let g = self.post(
            "/v3/lease/grant",
            &json!({"TTL": self.ttl.as_secs_f64().ceil().max(1.0) as u64}),
        )?;
        let lease = int(&g["ID"]).ok_or_else(|| err(format!("etcd lease grant: {g}")))?;
        let key = b64(self.key.as_bytes());
        let t = self.post(
            "/v3/kv/txn",
            &json!({
                "compare": [{"target": "CREATE", "key": key, "createRevision": "0"}],
                "success": [{"requestPut": {"key": key, "value": b64(self.name.as_bytes()), "lease": lease.to_string()}}]
            }),
        )?;
        if t["succeeded"].as_bool() != Some(true) {
            let _ = self.revoke(lease);
            return Ok(None);
        }
        let rev = int(&t["header"]["revision"]).unwrap_or(0) as u64;
        Ok(Some((lease, rev)))
    }

    /// Renew the lease: false when it is gone (expired: someone else may hold the key).
    pub fn keepalive(&self, lease: i64) -> std::io::Result<bool> {
        let v = self.post("/v3/lease/keepalive", &json!({"ID": lease.to_string()}))?;
        Ok(int(&v["result"]["TTL"]).unwrap_or(0) > 0)
    }

    pub fn revoke(&self, lease: i64) -> std::io::Result<()> {
        self.post("/v3/lease/revoke", &json!({"ID": lease.to_string()}))
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_etcd_expects() {
        assert_eq!(b64(b"/sysmgr/active"), "L3N5c21nci9hY3RpdmU=");
        assert_eq!(b64(b"sup-1"), "c3VwLTE=");
        assert_eq!(b64(b"ab"), "YWI=");
        assert_eq!(b64(b""), "");
    }
}
