//! Who is calling: the [`Authenticator`] trait and the built-in [`KeyTable`].
//!
//! Every request carries `Authorization: UserKey <key>`. The adapter parses
//! the header (401 if it is missing or malformed), asks the authenticator
//! for the key's [`Principal`] (401 if unknown), and checks the scope the
//! endpoint needs (403 if a read-only key writes). The tenant comes from the
//! principal, never from the request body.
//!
//! [`KeyTable`] keeps only the SHA-256 of each key and compares digests in
//! constant time against every entry (the scan does not stop at a match), so
//! neither the keys nor the position of a match can be read off timings or
//! a memory dump. Keys never appear in logs or error bodies.

use std::fmt;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tickwheel::BoxError;

/// What a key may do. `Write` includes `Read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// List, get, executions, preview.
    Read,
    /// Everything: create, update, delete and run as well.
    Write,
}

impl Scope {
    /// Whether a key with this scope may do what `needed` requires.
    pub fn allows(self, needed: Scope) -> bool {
        self >= needed
    }
}

impl std::str::FromStr for Scope {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "read" => Ok(Scope::Read),
            "write" => Ok(Scope::Write),
            other => Err(format!("scope {other:?} is not `read` or `write`")),
        }
    }
}

/// The caller a key stands for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The organisation whose tasks the key reaches.
    pub tenant: String,
    /// Who holds the key (for logs; never a secret).
    pub user: String,
    /// What the key may do.
    pub scope: Scope,
}

/// Why a key was not accepted.
#[derive(Debug)]
#[non_exhaustive]
pub enum AuthError {
    /// The key is not known (answered 401).
    UnknownKey,
    /// The authenticator could not decide (its backend failed; answered
    /// 500 with the detail in the log).
    Backend(BoxError),
}

/// Maps a presented key to a [`Principal`]. The host can replace the
/// built-in [`KeyTable`] with its own (a database of keys, an identity
/// service).
#[async_trait]
pub trait Authenticator: Send + Sync + fmt::Debug + 'static {
    /// The principal of `key`.
    ///
    /// # Errors
    ///
    /// [`AuthError::UnknownKey`] for a key that is not valid.
    async fn authenticate(&self, key: &str) -> Result<Principal, AuthError>;
}

/// The built-in authenticator: a fixed table of keys, stored as SHA-256
/// digests.
#[derive(Clone, Default)]
pub struct KeyTable {
    entries: Vec<([u8; 32], Principal)>,
}

impl fmt::Debug for KeyTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Principals only: digests are not secret, but there is no need to
        // print them either.
        f.debug_struct("KeyTable")
            .field(
                "principals",
                &self.entries.iter().map(|(_, p)| p).collect::<Vec<_>>(),
            )
            .finish()
    }
}

/// A `TICKWHEEL_API_KEYS`-style entry that could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyTableError {
    /// 1-based position of the entry in the list.
    pub entry: usize,
    /// What is wrong with it (never the key itself).
    pub message: String,
}

impl fmt::Display for KeyTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "API key entry {}: {}", self.entry, self.message)
    }
}

impl std::error::Error for KeyTableError {}

impl KeyTable {
    /// An empty table (every key is refused).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `key` for `tenant` with `scope`. The user name recorded for it
    /// is `key-` and the first 8 hex digits of its digest, which identifies
    /// the key in logs without revealing it.
    #[must_use]
    pub fn with_key(mut self, key: &str, tenant: impl Into<String>, scope: Scope) -> Self {
        let digest = digest(key);
        let user = format!(
            "key-{}",
            digest[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        );
        self.entries.push((
            digest,
            Principal {
                tenant: tenant.into(),
                user,
                scope,
            },
        ));
        self
    }

    /// Parses comma-separated `KEY:TENANT:SCOPE` entries, SCOPE `read` or
    /// `write` (the format of `TICKWHEEL_API_KEYS`). Blank entries are
    /// skipped.
    ///
    /// # Errors
    ///
    /// [`KeyTableError`] naming the entry by position (never echoing the
    /// key) when it does not have three non-empty parts or a known scope.
    ///
    /// # Examples
    ///
    /// ```
    /// use tickwheel_http::KeyTable;
    /// let keys = KeyTable::parse("ka:acme:write,kr:acme:read,kg:globex:write").unwrap();
    /// assert_eq!(keys.len(), 3);
    /// assert!(KeyTable::parse("ka:acme").is_err());
    /// ```
    pub fn parse(spec: &str) -> Result<Self, KeyTableError> {
        let mut table = Self::new();
        for (i, entry) in spec.split(',').enumerate() {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let error = |message: &str| KeyTableError {
                entry: i + 1,
                message: message.to_owned(),
            };
            // The key may itself contain ':'; tenant and scope may not.
            let mut parts = entry.rsplitn(3, ':');
            let (Some(scope), Some(tenant), Some(key)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(error("expected KEY:TENANT:SCOPE"));
            };
            if key.is_empty() || tenant.trim().is_empty() {
                return Err(error("the key and the tenant must not be empty"));
            }
            let scope: Scope = scope.parse().map_err(|e: String| error(&e))?;
            table = table.with_key(key, tenant.trim(), scope);
        }
        Ok(table)
    }

    /// How many keys the table holds.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the table holds no key.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The principal of `key`, comparing its digest with every entry in
    /// constant time.
    pub fn lookup(&self, key: &str) -> Option<&Principal> {
        let presented = digest(key);
        let mut found = None;
        for (stored, principal) in &self.entries {
            if bool::from(stored.ct_eq(&presented)) && found.is_none() {
                found = Some(principal);
            }
        }
        found
    }
}

#[async_trait]
impl Authenticator for KeyTable {
    async fn authenticate(&self, key: &str) -> Result<Principal, AuthError> {
        self.lookup(key).cloned().ok_or(AuthError::UnknownKey)
    }
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// The key of an `Authorization: UserKey <key>` header value, or why it is
/// not usable. The scheme is matched case-insensitively.
pub(crate) fn parse_header(value: &[u8]) -> Result<&str, &'static str> {
    let value = std::str::from_utf8(value)
        .map_err(|_| "the Authorization header is not valid UTF-8")?
        .trim();
    let (scheme, key) = value
        .split_once(' ')
        .ok_or("the Authorization header must be `UserKey <key>`")?;
    if !scheme.eq_ignore_ascii_case("UserKey") {
        return Err("the Authorization scheme must be `UserKey`");
    }
    let key = key.trim();
    if key.is_empty() {
        return Err("the Authorization header has no key after `UserKey`");
    }
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_holds_digests_not_keys() {
        let table = KeyTable::parse("secret-key-1:acme:write").unwrap();
        let debug = format!("{table:?}");
        assert!(!debug.contains("secret-key-1"), "{debug}");
        assert_eq!(table.lookup("secret-key-1").unwrap().tenant, "acme");
        assert!(table.lookup("secret-key-2").is_none());
        assert!(table.lookup("").is_none());
    }

    #[test]
    fn parse_reports_entry_without_key() {
        let err = KeyTable::parse("ok:acme:read, topsecret:acme:admin").unwrap_err();
        assert_eq!(err.entry, 2);
        assert!(!err.to_string().contains("topsecret"), "{err}");
        assert!(KeyTable::parse("k::write").is_err());
        assert!(KeyTable::parse(":acme:write").is_err());
        // A key may contain ':'.
        let t = KeyTable::parse("a:b:acme:read").unwrap();
        assert_eq!(t.lookup("a:b").unwrap().scope, Scope::Read);
    }

    #[test]
    fn header_parsing() {
        assert_eq!(parse_header(b"UserKey abc"), Ok("abc"));
        assert_eq!(parse_header(b"userkey  abc "), Ok("abc"));
        assert!(parse_header(b"Bearer abc").is_err());
        assert!(parse_header(b"UserKey").is_err());
        assert!(parse_header(b"UserKey   ").is_err());
        assert!(parse_header(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn write_implies_read() {
        assert!(Scope::Write.allows(Scope::Read));
        assert!(Scope::Read.allows(Scope::Read));
        assert!(!Scope::Read.allows(Scope::Write));
    }
}
