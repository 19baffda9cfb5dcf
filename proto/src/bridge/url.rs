//! Addresses of outgoing Echo links: `echo+tls://HOST:PORT?cert-sha256=HEX` (the peer's
//! certificate pinned by its SHA-256), `echo+tls://HOST:PORT` (pinned on first use) or
//! `echo+tcp://HOST:PORT` (plain TCP, only when asked for).

use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct EchoUrl {
    pub tls: bool,
    /// `HOST:PORT` as given (IPv6 in brackets).
    pub addr: String,
    /// The SHA-256 of the peer certificate's DER, when pinned in the address.
    pub cert_sha256: Option<[u8; 32]>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0} (expected echo+tls://HOST:PORT[?cert-sha256=64 hex] or echo+tcp://HOST:PORT)")]
pub struct EchoUrlError(String);

impl EchoUrl {
    /// Whether a neighbor spec is an Echo address (rather than a QUIC neighbor).
    pub fn is_echo(spec: &str) -> bool {
        spec.starts_with("echo+")
    }

    /// The identifier the admin API lists and removes this link by: `echo-` and ten hex
    /// digits of a hash of the scheme and address (stable across restarts).
    pub fn id(&self) -> String {
        let h = blake3::hash(format!("{}://{}", self.scheme(), self.addr).as_bytes());
        format!("echo-{}", &hex::encode(h.as_bytes())[..10])
    }

    pub fn scheme(&self) -> &'static str {
        if self.tls {
            "echo+tls"
        } else {
            "echo+tcp"
        }
    }
}

impl FromStr for EchoUrl {
    type Err = EchoUrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |m: &str| EchoUrlError(format!("{s:?}: {m}"));
        let (tls, rest) = if let Some(r) = s.strip_prefix("echo+tls://") {
            (true, r)
        } else if let Some(r) = s.strip_prefix("echo+tcp://") {
            (false, r)
        } else {
            return Err(err("unknown scheme"));
        };
        let (addr, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        let addr = addr.trim_end_matches('/');
        let (host, port) = addr.rsplit_once(':').ok_or_else(|| err("missing :PORT"))?;
        if host.is_empty() {
            return Err(err("missing host"));
        }
        port.parse::<u16>()
            .map_err(|_| err("port is not a number from 0 to 65535"))?;
        let mut cert_sha256 = None;
        if let Some(q) = query {
            for kv in q.split('&').filter(|kv| !kv.is_empty()) {
                match kv.split_once('=') {
                    Some(("cert-sha256", v)) => {
                        if !tls {
                            return Err(err("cert-sha256 needs echo+tls"));
                        }
                        let v = v.replace(':', "");
                        let b = hex::decode(&v)
                            .ok()
                            .and_then(|b| <[u8; 32]>::try_from(b).ok())
                            .ok_or_else(|| err("cert-sha256 is not 64 hex digits"))?;
                        cert_sha256 = Some(b);
                    }
                    _ => return Err(err(&format!("unknown parameter {kv:?}"))),
                }
            }
        }
        Ok(EchoUrl {
            tls,
            addr: addr.to_string(),
            cert_sha256,
        })
    }
}

impl fmt::Display for EchoUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme(), self.addr)?;
        if let Some(c) = &self.cert_sha256 {
            write!(f, "?cert-sha256={}", hex::encode(c))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        let pin = "ab".repeat(32);
        let u: EchoUrl = format!("echo+tls://10.0.0.5:4710?cert-sha256={pin}")
            .parse()
            .unwrap();
        assert!(u.tls);
        assert_eq!(u.addr, "10.0.0.5:4710");
        assert_eq!(u.cert_sha256, Some([0xab; 32]));
        assert_eq!(
            u.to_string(),
            format!("echo+tls://10.0.0.5:4710?cert-sha256={pin}")
        );
        let p: EchoUrl = "echo+tcp://[::1]:5710".parse().unwrap();
        assert!(!p.tls && p.cert_sha256.is_none());
        assert_eq!(p.addr, "[::1]:5710");
        assert!(p.id().starts_with("echo-") && p.id().len() == 15);
        assert_ne!(p.id(), u.id());
        for bad in [
            "tls://a:1",
            "echo+tls://a",
            "echo+tls://:1",
            "echo+tls://a:99999",
            "echo+tcp://a:1?cert-sha256=00",
            "echo+tls://a:1?cert-sha256=zz",
            "echo+tls://a:1?x=1",
        ] {
            assert!(bad.parse::<EchoUrl>().is_err(), "{bad}");
        }
    }
}
