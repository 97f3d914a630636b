//! Running a provider's validation against a scripted network, for its unit tests.

use futures::executor::block_on;

use super::{Accepted, Provider, Target};
use crate::crypto::SecretKey;
use crate::domain::CredentialParams;
use crate::probe::{Failure, Prober};
use crate::testing::{FakeClock, FakeHttp, FixedJitter, Scripted, Sent};

pub(super) struct Run {
    pub out: Result<Accepted, Failure>,
    pub requests: Vec<Sent>,
}

fn run_with(provider: &dyn Provider, key: &str, script: Vec<Scripted>) -> Run {
    let clock = FakeClock::at(1_800_000_000_000);
    let http = FakeHttp::new(&clock, script);
    let prober = Prober::new(&http, &clock, &FixedJitter(0.5), 10_000, 4_000);
    let bases: Vec<String> = provider
        .info()
        .endpoints
        .iter()
        .map(|e| e.default.to_owned())
        .collect();
    let params = CredentialParams {
        region: Some("eastus".into()),
        base_url: Some("https://ollama.example.com".into()),
    };
    let target = Target {
        bases: &bases,
        params: &params,
    };
    let key = SecretKey::new(key.to_owned());
    let out = block_on(provider.validate(&prober, &target, &key));
    let requests = http.sent.borrow().clone();
    if !key.is_empty() {
        assert!(
            requests.iter().all(|r| !r.0.contains(key.expose())),
            "a key in a URL"
        );
    }
    Run { out, requests }
}

/// Validates the key `sk-test-key` with the provider's default endpoints, region
/// `eastus` and base URL `https://ollama.example.com`.
pub(super) fn run(provider: &dyn Provider, script: Vec<Scripted>) -> Run {
    run_with(provider, "sk-test-key", script)
}

pub(super) fn run_keyless(provider: &dyn Provider, script: Vec<Scripted>) -> Run {
    run_with(provider, "", script)
}
