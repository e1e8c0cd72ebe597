//! Which peer may use which of this site's page-store scopes.
//!
//! A page store answers with its scope's fingerprint inventory (what this
//! site holds) and is filled with the pages that arrive, so a peer that
//! may name any scope could learn what another tenant's VMs hold, or fill
//! their store. The rule: a peer may use the scope named after its site
//! (its authenticated identity, so a peer always has a scope of its own
//! and the default needs no configuration), plus the shared scopes the
//! operator lists for it (`peers[i].scopes` in the gateway config). A
//! scope listed for several peers is shared between them: content one
//! sends can be referenced by the others.
//!
//! Memory migrations name their scope (the source picks it; the
//! destination checks it here), and storage imports dedup against the
//! scope named after the source site.

use std::collections::HashMap;

/// The config key that lists a peer's shared scopes.
pub const SCOPES_KEY: &str = "scopes";

/// The scopes each peer may use beyond its own.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScopeGrants {
    shared: HashMap<String, Vec<String>>,
}

/// A peer named a scope it may not use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("site '{peer}' may not use dedup scope '{scope}' here: a peer may use the scope named after it ('{peer}') and the scopes listed for it in {SCOPES_KEY} of its [[peers]] entry in this gateway's config; add '{scope}' there to share that scope with '{peer}', or migrate without --scope (the source then uses its own site name)")]
pub struct ScopeRefused {
    pub peer: String,
    pub scope: String,
}

impl ScopeGrants {
    /// No shared scopes: each peer may use only its own.
    pub fn new() -> Self {
        Self::default()
    }

    /// Lets `peer` use `scopes` too (on top of any granted before).
    pub fn grant(&mut self, peer: &str, scopes: impl IntoIterator<Item = String>) {
        self.shared
            .entry(peer.to_string())
            .or_default()
            .extend(scopes);
    }

    /// The scopes `peer` may use besides its own.
    pub fn shared(&self, peer: &str) -> &[String] {
        self.shared.get(peer).map_or(&[], Vec::as_slice)
    }

    /// Whether `peer` may use `scope`.
    pub fn check(&self, peer: &str, scope: &str) -> Result<(), ScopeRefused> {
        if scope == peer || self.shared(peer).iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(ScopeRefused {
                peer: peer.to_string(),
                scope: scope.to_string(),
            })
        }
    }

    /// The scope a peer's storage imports dedup against: its own.
    pub fn own_scope(peer: &str) -> &str {
        peer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_uses_its_own_scope_and_the_shared_ones_listed_for_it_only() {
        let mut g = ScopeGrants::new();
        assert_eq!(g.check("site-a", "site-a"), Ok(()));
        assert!(g.check("site-a", "site-b").is_err());
        assert!(g.check("site-a", "default").is_err());
        g.grant("site-a", ["shared".to_string()]);
        g.grant("site-c", ["shared".to_string(), "site-b".to_string()]);
        assert_eq!(g.check("site-a", "shared"), Ok(()));
        assert_eq!(g.check("site-c", "shared"), Ok(()));
        assert_eq!(g.check("site-c", "site-b"), Ok(()));
        let e = g.check("site-a", "site-b").unwrap_err();
        assert_eq!(g.check("site-b", "shared").unwrap_err().scope, "shared");
        let msg = e.to_string();
        assert!(
            msg.contains("'site-b'") && msg.contains("scopes") && msg.contains("[[peers]]"),
            "{msg}"
        );
        assert_eq!(ScopeGrants::own_scope("site-c"), "site-c");
    }
}
