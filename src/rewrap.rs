//! Master-key rotation, one row at a time: a stored key sealed again under the active
//! version, with a fresh fingerprint and its `master_key.rotated` event, through the
//! version-conditional write (the job that walks the rows is `jobs::rotation`).

use crate::audit::{Action, Facts, Origin};
use crate::config::Config;
use crate::credentials::keys::{fingerprint_material, master_keys};
use crate::credentials::{CredentialStore, Written};
use crate::crypto::{fingerprint, open, seal, Binding};
use crate::domain::{Clock, Credential};
use crate::error::Error;

/// What a master-key rewrap did to one row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rewrapped {
    /// Sealed again under the active version (with its `master_key.rotated` event).
    Done,
    /// The row no longer decrypts under any configured version: left as it is.
    Unreadable,
    /// Changed or gone since it was read (a rotation by its user seals under the active
    /// version anyway), or keyless: nothing to do.
    Moved,
    /// Already under the active version (another step of the job, or its user, sealed it
    /// meanwhile): left alone, with no event.
    Current,
}

/// Sealing stored keys again under the active master key version: what the rotation job
/// does to each row.
pub struct Rewrap<'a> {
    pub config: &'a Config,
    pub store: &'a dyn CredentialStore,
    pub clock: &'a dyn Clock,
}

impl Rewrap<'_> {
    /// Seals `read`'s key again under the active master key version, with a fresh
    /// fingerprint, through the version-conditional write; what is written is opened back
    /// first, so a row is never left under a key that cannot open it.
    pub async fn rewrap(&self, read: &Credential, origin: &Origin) -> Result<Rewrapped, Error> {
        let keys = master_keys(self.config)?;
        let Some(sealed) = &read.secret else {
            return Ok(Rewrapped::Moved);
        };
        if sealed.key_version == keys.active() {
            return Ok(Rewrapped::Current);
        }
        let binding = Binding::of(read);
        let Ok(key) = open(keys, &binding, sealed) else {
            return Ok(Rewrapped::Unreadable);
        };
        let fresh =
            seal(keys, &binding, &key).map_err(|e| Error::internal(format!("sealing: {e}")))?;
        if !open(keys, &binding, &fresh).is_ok_and(|back| back.expose() == key.expose()) {
            return Err(Error::internal("a rewrapped key did not open back"));
        }
        let (from, to) = (sealed.key_version.get(), fresh.key_version.get());
        let mut next = read.clone();
        next.fingerprint = fingerprint(
            keys,
            keys.active(),
            &read.user_id,
            read.provider,
            &fingerprint_material(&key, &read.params),
        );
        next.secret = Some(fresh);
        next.updated_at = self.clock.now();
        let mut facts = Facts::new(Action::MasterKeyRotated);
        facts.about(&read.id, Some(read.provider));
        facts.detail = Some(serde_json::json!({"from_version": from, "to_version": to}));
        let event = facts.event(origin, &read.user_id, next.updated_at, None);
        Ok(match self.store.update(&next, &event).await? {
            Written::Done => Rewrapped::Done,
            _ => Rewrapped::Moved,
        })
    }
}
