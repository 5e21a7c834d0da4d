//! Consumers and their credentials, compiled for lookups on the request path: API keys
//! are indexed by a SipHash keyed at random per process and confirmed with a
//! constant-time comparison (so the lookup's timing leaks nothing useful about a key),
//! basic-auth credentials by username with Kong's password hash, groups per consumer.

use crate::entities::{Acl, BasicAuthCredential, Consumer, KeyAuthCredential};
use http::HeaderValue;
use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};

#[derive(Debug)]
pub struct ConsumerRt {
    pub id: String,
    pub username: Option<String>,
    pub custom_id: Option<String>,
    pub groups: Vec<String>,
    /// `X-Consumer-Groups` value: groups joined with ", ".
    pub groups_header: Option<HeaderValue>,
    /// `X-Consumer-Id`, `X-Consumer-Username`, `X-Consumer-Custom-Id` values, made
    /// once here rather than on every authenticated request.
    pub id_header: Option<HeaderValue>,
    pub username_header: Option<HeaderValue>,
    pub custom_id_header: Option<HeaderValue>,
}

#[derive(Debug)]
pub struct KeyCredential {
    pub consumer: usize,
    pub id: String,
}

#[derive(Debug)]
pub struct BasicCredential {
    pub consumer: usize,
    pub username: String,
    /// Kong's stored form: hex(sha1(password .. consumer_id)).
    pub password_hash: String,
}

#[derive(Debug, Default)]
pub struct Consumers {
    pub list: Vec<ConsumerRt>,
    /// API keys and their credentials, hashed with `key_hasher`.
    keys: hashbrown::HashTable<(Box<[u8]>, KeyCredential)>,
    key_hasher: RandomState,
    basic: HashMap<String, BasicCredential>,
    /// Consumer lookup by id or username (for `anonymous`).
    by_ref: HashMap<String, usize>,
}

/// Kong's basic-auth hash: sha1(password .. consumer_id), hex.
pub fn basic_hash(password: &str, consumer_id: &str) -> String {
    use sha1::Digest as _;
    let mut h = sha1::Sha1::new();
    h.update(password.as_bytes());
    h.update(consumer_id.as_bytes());
    hex::encode(h.finalize())
}

/// Equality whose time does not depend on where the inputs differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Consumers {
    /// `transform`: the file's `_transform` (basic-auth passwords given in clear text).
    pub fn build(
        consumers: &[Consumer],
        acls: &[Acl],
        keyauth_credentials: &[KeyAuthCredential],
        basicauth_credentials: &[BasicAuthCredential],
        transform: bool,
    ) -> Consumers {
        let mut c = Consumers::default();
        for (i, con) in consumers.iter().enumerate() {
            let mut groups: Vec<String> = acls
                .iter()
                .filter(|a| a.consumer == i)
                .map(|a| a.group.clone())
                .collect();
            groups.dedup();
            let groups_header = (!groups.is_empty())
                .then(|| HeaderValue::from_str(&groups.join(", ")).ok())
                .flatten();
            let value = |v: Option<&str>| v.and_then(|v| HeaderValue::from_str(v).ok());
            c.list.push(ConsumerRt {
                id: con.id.clone(),
                username: con.username.clone(),
                custom_id: con.custom_id.clone(),
                groups,
                groups_header,
                id_header: value(Some(&con.id)),
                username_header: value(con.username.as_deref()),
                custom_id_header: value(con.custom_id.as_deref()),
            });
            c.by_ref.insert(con.id.clone(), i);
            if let Some(u) = &con.username {
                c.by_ref.entry(u.clone()).or_insert(i);
            }
        }
        for k in keyauth_credentials {
            if k.key.is_empty() {
                // An opaque key left unset in the environment: never a valid empty key.
                tracing::warn!(
                    consumer = consumers[k.consumer]
                        .username
                        .as_deref()
                        .unwrap_or(&consumers[k.consumer].id),
                    line = k.pos.line,
                    "skipping a key-auth credential with an empty key"
                );
                continue;
            }
            let cred = KeyCredential {
                consumer: k.consumer,
                id: k.id.clone(),
            };
            let key = k.key.as_bytes();
            let hasher = &c.key_hasher;
            match c.keys.entry(
                hasher.hash_one(key),
                |(stored, _)| **stored == *key,
                |(stored, _)| hasher.hash_one(&**stored),
            ) {
                // A later credential with the same key replaces the earlier one.
                hashbrown::hash_table::Entry::Occupied(mut e) => e.get_mut().1 = cred,
                hashbrown::hash_table::Entry::Vacant(e) => {
                    e.insert((key.into(), cred));
                }
            }
        }
        for b in basicauth_credentials {
            let consumer_id = &consumers[b.consumer].id;
            let password_hash = if transform {
                basic_hash(&b.password, consumer_id)
            } else {
                b.password.to_ascii_lowercase()
            };
            c.basic.insert(
                b.username.clone(),
                BasicCredential {
                    consumer: b.consumer,
                    username: b.username.clone(),
                    password_hash,
                },
            );
        }
        c
    }

    pub fn by_key(&self, key: &[u8]) -> Option<&KeyCredential> {
        self.keys
            .find(self.key_hasher.hash_one(key), |(stored, _)| {
                constant_time_eq(stored, key)
            })
            .map(|(_, cred)| cred)
    }

    /// The credential for `username` if `password` is right (constant-time compare).
    pub fn check_basic(&self, username: &str, password: &str) -> Option<&BasicCredential> {
        let cred = self.basic.get(username)?;
        let consumer_id = &self.list.get(cred.consumer)?.id;
        let given = basic_hash(password, consumer_id);
        constant_time_eq(given.as_bytes(), cred.password_hash.as_bytes()).then_some(cred)
    }

    pub fn has_basic_user(&self, username: &str) -> bool {
        self.basic.contains_key(username)
    }

    pub fn by_ref(&self, r: &str) -> Option<usize> {
        self.by_ref.get(r).copied()
    }
}
