//! The work of the operator's command line (`registry status`, `registry services`,
//! `registry watch`): what those subcommands fetch and print, for a person at a terminal
//! or (`--json`) for a script.
//!
//! A crate of its own, apart from the server and from `registry-client`: the subcommands
//! talk to a running registry over HTTP through [`RegistryApi`], exactly as any other
//! client does (so they work against a remote cluster and need no database access), and
//! the tables they print are for people, which no service embedding the client needs. The
//! `registry` binary parses the command line and calls these functions; the demo prints
//! the same status table.
//!
//! The formatting lives in pure functions ([`display`]: data in, text out) so it is tested
//! without a server; the async functions only fetch and write.

pub mod display;
#[cfg(test)]
mod fixtures;
mod watch;

use std::io::Write;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde::Serialize;

/// The client every command takes, re-exported so that the binary names it without a
/// dependency on `registry-client`.
pub use registry_client::RegistryApi;
pub use watch::{MAX_RECONNECTS, watch};

use crate::display::{format_services, format_status};

/// The client of the registry at `url` (several URLs, comma-separated, fail over), sending
/// `token` when one is given.
///
/// ```
/// let api = registry_cli::connect("http://127.0.0.1:8000", Some("s3cret".into()))?;
/// assert_eq!(api.base_url().as_str(), "http://127.0.0.1:8000/");
/// # Ok::<(), anyhow::Error>(())
/// ```
pub fn connect(url: &str, token: Option<String>) -> anyhow::Result<RegistryApi> {
    let api = RegistryApi::new(url)?;
    Ok(match token {
        Some(token) => api.with_token(token),
        None => api,
    })
}

/// `registry status`: the whole system now (or `at` a past moment), as a table or, with
/// `json`, as the pretty-printed body of `GET /v1/status`.
pub async fn print_status(
    api: &RegistryApi,
    at: Option<DateTime<Utc>>,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let status = api
        .status(at)
        .await
        .with_context(|| format!("could not read the status from {}", api.base_url()))?;
    let text = if json {
        pretty_json(&status)?
    } else {
        format_status(&status)
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

/// `registry services`: one line per service with its instance count per status, or, with
/// `json`, the pretty-printed body of `GET /v1/services`.
pub async fn print_services(
    api: &RegistryApi,
    json: bool,
    out: &mut (dyn Write + Send),
) -> anyhow::Result<()> {
    let list = api
        .services()
        .await
        .with_context(|| format!("could not list services at {}", api.base_url()))?;
    let text = if json {
        pretty_json(&list)?
    } else {
        format_services(&list)
    };
    out.write_all(text.as_bytes())?;
    out.flush()?;
    Ok(())
}

fn pretty_json(value: &impl Serialize) -> anyhow::Result<String> {
    let mut text = serde_json::to_string_pretty(value)?;
    text.push('\n');
    Ok(text)
}
