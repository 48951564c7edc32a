//! A fixed-size, lock-free memory of access tokens whose signature has been verified, so a resource
//! server introspecting the same token again does not pay for another signature verification (the
//! same idea as Envoy's `jwt_authn` cache).
//!
//! Only the signature check is remembered. Every introspection still checks the header, that the
//! signing key is still published, the issuer, the expiry against the clock, revocation and the
//! client. An entry is the SHA-256 of the exact token bytes, so a hit means "these exact bytes
//! verified before"; a different token can only hit by a SHA-256 collision.
//!
//! Direct-mapped: slot = low bits of the hash, tag = 128 further bits in two atomics. A torn read
//! (two writers racing on one slot) can only cause a miss, never a false hit: a hit needs both halves
//! to equal the query's.

use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

/// Remembered token signatures.
pub struct VerifiedTokens {
    slots: Box<[(AtomicU64, AtomicU64)]>,
    mask: usize,
}

/// The SHA-256 digest of a token, computed once per request.
pub struct TokenDigest([u8; 32]);

impl TokenDigest {
    /// Digest of `token`.
    pub fn of(token: &str) -> Self {
        Self(Sha256::digest(token.as_bytes()).into())
    }

    fn parts(&self) -> (usize, u64, u64) {
        let word = |i: usize| u64::from_le_bytes(self.0[i..i + 8].try_into().unwrap_or_default());
        (word(0) as usize, word(8), word(16))
    }
}

impl VerifiedTokens {
    /// A memory of about `entries` tokens (rounded up to a power of two); 0 disables it.
    pub fn new(entries: usize) -> Self {
        let size = if entries == 0 { 0 } else { entries.next_power_of_two() };
        let slots = (0..size).map(|_| (AtomicU64::new(0), AtomicU64::new(0))).collect();
        Self {
            slots,
            mask: size.saturating_sub(1),
        }
    }

    /// Whether a token with this digest was verified before.
    pub fn contains(&self, digest: &TokenDigest) -> bool {
        let (index, a, b) = digest.parts();
        let Some(slot) = self.slots.get(index & self.mask) else {
            return false;
        };
        (a != 0 || b != 0) && slot.0.load(Ordering::Acquire) == a && slot.1.load(Ordering::Acquire) == b
    }

    /// Remembers a verified token.
    pub fn insert(&self, digest: &TokenDigest) {
        let (index, a, b) = digest.parts();
        if let Some(slot) = self.slots.get(index & self.mask) {
            slot.0.store(a, Ordering::Release);
            slot.1.store(b, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_exact_tokens_only() {
        let cache = VerifiedTokens::new(1000);
        assert_eq!(cache.slots.len(), 1024);
        let a = TokenDigest::of("a.b.c");
        assert!(!cache.contains(&a));
        cache.insert(&a);
        assert!(cache.contains(&a));
        assert!(!cache.contains(&TokenDigest::of("a.b.d")));
        let disabled = VerifiedTokens::new(0);
        disabled.insert(&a);
        assert!(!disabled.contains(&a));
    }
}
