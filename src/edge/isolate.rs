//! What an isolate parses once and keeps for its life: the configuration, the issuer's
//! key set and Infisical's cache of system keys. Every invocation borrows it.

use worker::Env;

use crate::auth::JwksCache;
use crate::config::Config;
use crate::crypto::MasterKeys;
use crate::domain::ConfigError;
use crate::system_keys::InfisicalCache;

/// What an isolate parses once and keeps for its life: the configuration and, when
/// it names an issuer's JWKS, the cache of that key set.
pub(super) struct Isolate {
    config: Result<Config, Vec<ConfigError>>,
    pub(super) jwks: Option<JwksCache>,
    pub(super) infisical: Option<InfisicalCache>,
    /// The master keys when the configuration has other problems: the audit chainer
    /// still seals with them, so events keep being chained.
    keys_alone: Option<MasterKeys>,
}

impl Isolate {
    pub(super) fn config(&self) -> Result<&Config, &[ConfigError]> {
        self.config.as_ref().map_err(Vec::as_slice)
    }

    /// The master keys the audit chain is sealed with, if any are usable.
    pub(super) fn chain_keys(&self) -> Option<&MasterKeys> {
        match &self.config {
            Ok(c) => c.master_keys.as_ref().ok(),
            Err(_) => self.keys_alone.as_ref(),
        }
    }
}

pub(super) fn isolate(env: &Env) -> &'static Isolate {
    thread_local! {
        static ISOLATE: std::cell::OnceCell<&'static Isolate> = const { std::cell::OnceCell::new() };
    }
    ISOLATE.with(|cell| {
        *cell.get_or_init(|| {
            let mut config = Config::parse(|name| super::runtime::env_string(env, name));
            if let Err(errors) = &config {
                for e in errors {
                    worker::console_error!("configuration: {e}");
                }
            }
            let jwks = config
                .as_ref()
                .ok()
                .and_then(|c| JwksCache::for_settings(&c.jwt));
            let infisical = config
                .as_mut()
                .ok()
                .and_then(|c| c.infisical.take())
                .map(InfisicalCache::new);
            let keys_alone = config.is_err().then(|| {
                let var = |name| super::runtime::env_string(env, name);
                MasterKeys::from_config(
                    var("MASTER_KEYS").as_deref(),
                    var("MASTER_KEY_ACTIVE").as_deref(),
                    var("MASTER_KEY").as_deref(),
                )
                .ok()
            });
            // Leaked once per isolate on purpose: every request borrows it.
            Box::leak(Box::new(Isolate {
                config,
                jwks,
                infisical,
                keys_alone: keys_alone.flatten(),
            }))
        })
    })
}
