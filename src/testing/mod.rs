//! In-memory implementations of the core's seams, for host tests: one file per seam,
//! named after the module whose seam it fakes.

mod api;
mod audit;
mod auth;
mod budgets;
mod credentials;
mod http;
mod import;
mod jobs;
mod limits;
mod metering;
mod time;

pub(crate) use api::*;
pub(crate) use audit::*;
pub(crate) use auth::*;
pub(crate) use budgets::*;
pub(crate) use credentials::*;
pub(crate) use http::*;
pub(crate) use jobs::*;
pub(crate) use limits::*;
pub(crate) use metering::*;
pub(crate) use time::*;
