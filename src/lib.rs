//! byok-vault: a bring-your-own-key credential vault for AI apps, as a Cloudflare Worker.
//!
//! The crate has two halves. Everything outside `edge` is the pure core: it knows
//! nothing of Workers, compiles on the host and is tested with `cargo test`. It reaches
//! the outside world only through small traits (seams), each beside the code that uses
//! it. `edge` is the thin glue compiled for wasm32 only: entry points, D1, Fetch, queues,
//! clock. `scripts/modules.py` holds the modules to their floors: domain, crypto, the
//! core's services, api and jobs, edge.

// clippy.toml keeps serde_json::from_str out of the Worker; tests may use it.
#![cfg_attr(test, allow(clippy::disallowed_methods))]

pub mod api;
pub mod audit;
pub mod auth;
pub mod budgets;
pub mod checks;
pub mod config;
pub mod credentials;
pub mod crypto;
pub mod domain;
pub mod endpoint_guard;
pub mod error;
pub mod http;
pub mod import;
pub mod jobs;
mod json_read;
pub mod limits;
pub mod metering;
pub mod notify;
pub mod probe;
pub mod providers;
pub mod realtime;
pub mod redact;
pub mod revalidation;
pub mod rewrap;
mod small_sort;
pub mod system_keys;
pub mod usage;

#[cfg(target_arch = "wasm32")]
mod edge;

#[cfg(test)]
pub(crate) mod testing;
