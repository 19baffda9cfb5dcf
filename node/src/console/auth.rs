//! Who may use the console, without I/O (times are passed in): sessions bounded in number,
//! idle time and lifetime; one-time login codes; a limit on failed logins; CSRF tokens.
//! Secrets (session IDs, codes) are kept only as BLAKE3 hashes, so a memory dump of this table
//! does not log anyone in, and comparisons are constant-time (`blake3::Hash`'s `Eq`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine;

/// One-time login codes outstanding at once (`echomeshctl console` makes one per call).
pub const MAX_CODES: usize = 16;
/// A login code works this long, once.
pub const CODE_TTL: Duration = Duration::from_secs(120);
/// Failed logins: a burst of this many, then one per [`LOGIN_REFILL`].
pub const LOGIN_BURST: u32 = 5;
pub const LOGIN_REFILL: Duration = Duration::from_secs(6);

/// A fresh random secret, URL-safe (256 bits).
pub fn random_secret() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
}

fn key(secret: &str) -> blake3::Hash {
    blake3::hash(secret.as_bytes())
}

/// Constant-time equality of two short strings (CSRF tokens).
pub fn same_secret(a: &str, b: &str) -> bool {
    key(a) == key(b)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Logout,
    Expired,
    Evicted,
}

impl Ended {
    pub fn label(self) -> &'static str {
        match self {
            Ended::Logout => "logout",
            Ended::Expired => "expired",
            Ended::Evicted => "evicted",
        }
    }
}

/// What a page shows once after an action (post/redirect/get).
#[derive(Debug, Clone, PartialEq)]
pub enum Flash {
    Ok(String),
    Error(String),
    /// An invite made in this session: its token and expiry (Unix seconds).
    Invite {
        token: String,
        expires_unix: u64,
    },
}

#[derive(Debug)]
pub struct Session {
    pub csrf: String,
    created: Instant,
    last_used: Instant,
    pub flash: Option<Flash>,
}

#[derive(Debug)]
pub struct Limits {
    pub max_sessions: usize,
    pub idle: Duration,
    pub lifetime: Duration,
}

/// Sessions, login codes and the failed-login limiter.
#[derive(Debug)]
pub struct Auth {
    limits: Limits,
    sessions: HashMap<blake3::Hash, Session>,
    codes: HashMap<blake3::Hash, Instant>,
    login_tokens: f64,
    login_at: Instant,
}

impl Auth {
    pub fn new(limits: Limits, now: Instant) -> Self {
        Auth {
            limits,
            sessions: HashMap::new(),
            codes: HashMap::new(),
            login_tokens: f64::from(LOGIN_BURST),
            login_at: now,
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Drop expired sessions and codes; returns how many sessions ended.
    pub fn expire(&mut self, now: Instant) -> usize {
        let before = self.sessions.len();
        let (idle, life) = (self.limits.idle, self.limits.lifetime);
        self.sessions.retain(|_, s| {
            now.duration_since(s.last_used) < idle && now.duration_since(s.created) < life
        });
        self.codes.retain(|_, exp| now < *exp);
        before - self.sessions.len()
    }

    /// Start a session; returns its secret (the cookie value) and, if the table was full, that
    /// the least recently used session was ended to make room.
    pub fn login(&mut self, now: Instant) -> (String, Option<Ended>) {
        let mut ended = None;
        if self.sessions.len() >= self.limits.max_sessions {
            if let Some(oldest) = self
                .sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| *k)
            {
                self.sessions.remove(&oldest);
                ended = Some(Ended::Evicted);
            }
        }
        let secret = random_secret();
        self.sessions.insert(
            key(&secret),
            Session {
                csrf: random_secret(),
                created: now,
                last_used: now,
                flash: None,
            },
        );
        (secret, ended)
    }

    /// The live session with this secret, marked used.
    pub fn session(&mut self, secret: &str, now: Instant) -> Option<&mut Session> {
        let (idle, life) = (self.limits.idle, self.limits.lifetime);
        let s = self.sessions.get_mut(&key(secret))?;
        if now.duration_since(s.last_used) >= idle || now.duration_since(s.created) >= life {
            return None;
        }
        s.last_used = now;
        Some(s)
    }

    pub fn logout(&mut self, secret: &str) -> bool {
        self.sessions.remove(&key(secret)).is_some()
    }

    /// A new one-time login code, or `None` when [`MAX_CODES`] are outstanding.
    pub fn issue_code(&mut self, now: Instant) -> Option<String> {
        self.codes.retain(|_, exp| now < *exp);
        if self.codes.len() >= MAX_CODES {
            return None;
        }
        let code = random_secret();
        self.codes.insert(key(&code), now + CODE_TTL);
        Some(code)
    }

    /// Use a login code: true once, within its validity.
    pub fn redeem_code(&mut self, code: &str, now: Instant) -> bool {
        self.codes
            .remove(&key(code))
            .is_some_and(|expires| now < expires)
    }

    fn refill(&mut self, now: Instant) {
        let add = now.duration_since(self.login_at).as_secs_f64() / LOGIN_REFILL.as_secs_f64();
        self.login_tokens = (self.login_tokens + add).min(f64::from(LOGIN_BURST));
        self.login_at = now;
    }

    /// May a login be tried now? (Only failures use up the allowance.)
    pub fn login_allowed(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.login_tokens >= 1.0
    }

    pub fn login_failed(&mut self, now: Instant) {
        self.refill(now);
        self.login_tokens = (self.login_tokens - 1.0).max(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(now: Instant) -> Auth {
        Auth::new(
            Limits {
                max_sessions: 2,
                idle: Duration::from_secs(60),
                lifetime: Duration::from_secs(600),
            },
            now,
        )
    }

    #[test]
    fn sessions_are_bounded_in_number_idle_time_and_lifetime() {
        let t0 = Instant::now();
        let mut a = auth(t0);
        let (s1, e) = a.login(t0);
        assert_eq!(e, None);
        let (s2, _) = a.login(t0 + Duration::from_secs(1));
        assert!(a.session(&s1, t0 + Duration::from_secs(2)).is_some());
        // Full: the least recently used (s2) makes room.
        let (s3, e) = a.login(t0 + Duration::from_secs(3));
        assert_eq!(e, Some(Ended::Evicted));
        assert!(a.session(&s2, t0 + Duration::from_secs(3)).is_none());
        assert!(a.session(&s3, t0 + Duration::from_secs(3)).is_some());
        assert_eq!(a.sessions(), 2);
        // Idle for a minute: gone.
        assert!(a.session(&s1, t0 + Duration::from_secs(63)).is_none());
        // Used every 50 s, it still ends at its lifetime.
        let mut t = t0 + Duration::from_secs(3);
        while t < t0 + Duration::from_secs(590) {
            t += Duration::from_secs(50);
            if t < t0 + Duration::from_secs(603) {
                assert!(a.session(&s3, t).is_some(), "{t:?}");
            }
        }
        assert!(a.session(&s3, t0 + Duration::from_secs(604)).is_none());
        assert_eq!(a.expire(t0 + Duration::from_secs(604)), 2);
        assert!(!a.logout(&s3));
        assert!(a.session("not a session", t0).is_none());
    }

    #[test]
    fn login_codes_work_once_and_expire() {
        let t0 = Instant::now();
        let mut a = auth(t0);
        let c = a.issue_code(t0).unwrap();
        assert!(a.redeem_code(&c, t0 + Duration::from_secs(1)));
        assert!(!a.redeem_code(&c, t0 + Duration::from_secs(1)), "replayed");
        let c = a.issue_code(t0).unwrap();
        assert!(!a.redeem_code(&c, t0 + CODE_TTL), "expired");
        for _ in 0..MAX_CODES {
            assert!(a.issue_code(t0).is_some());
        }
        assert!(a.issue_code(t0).is_none(), "bounded");
        assert!(
            a.issue_code(t0 + CODE_TTL).is_some(),
            "expired ones make room"
        );
    }

    #[test]
    fn failed_logins_are_rate_limited() {
        let t0 = Instant::now();
        let mut a = auth(t0);
        for _ in 0..LOGIN_BURST {
            assert!(a.login_allowed(t0));
            a.login_failed(t0);
        }
        assert!(!a.login_allowed(t0));
        assert!(!a.login_allowed(t0 + LOGIN_REFILL / 2));
        assert!(a.login_allowed(t0 + LOGIN_REFILL));
        assert!(same_secret("abc", "abc") && !same_secret("abc", "abd"));
    }
}
