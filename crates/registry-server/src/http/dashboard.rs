//! The live dashboard at `/`: one HTML page, its stylesheet and its script, embedded in
//! the binary so the registry serves its own page offline, with no CDN and no build step
//! (plain JavaScript, no framework, nothing for npm to build).
//!
//! The page and its assets stay open when a read token is set (`super::is_open`): they
//! hold no registry data. The script asks for the token and sends it with every API read.

use axum::Router;
use axum::http::header;
use axum::response::{Html, IntoResponse};
use axum::routing::get;

use super::AppState;

/// Where the stylesheet is served.
pub const STYLE_PATH: &str = "/assets/dashboard.css";
/// Where the script is served.
pub const SCRIPT_PATH: &str = "/assets/dashboard.js";

const PAGE: &str = include_str!("../../assets/dashboard.html");
const STYLE: &str = include_str!("../../assets/dashboard.css");
const SCRIPT: &str = include_str!("../../assets/dashboard.js");

/// The page may load its own assets and call its own API, nothing else: no inline
/// script, no third-party origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The assets change with the binary: browsers revalidate instead of keeping an old copy
/// after an upgrade.
const CACHE_CONTROL: &str = "no-cache";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(index_page))
        .route(STYLE_PATH, get(style))
        .route(SCRIPT_PATH, get(script))
}

/// Paths that need no token: the page and its assets.
pub fn is_open(path: &str) -> bool {
    path == "/" || path == STYLE_PATH || path == SCRIPT_PATH
}

/// The live dashboard. Its two assets are left out of the OpenAPI document: they are
/// part of this page, not of the API.
#[utoipa::path(get, path = "/", tag = "operations", responses(
    (status = 200, description = "The live dashboard (HTML)", content_type = "text/html", body = String),
))]
pub async fn index_page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, CACHE_CONTROL),
        ],
        Html(PAGE),
    )
}

async fn style() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, CACHE_CONTROL),
        ],
        STYLE,
    )
}

async fn script() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, CACHE_CONTROL),
        ],
        SCRIPT,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_links_the_assets_it_is_served_with() {
        assert!(PAGE.contains(&format!("href=\"{STYLE_PATH}\"")));
        assert!(PAGE.contains(&format!("src=\"{SCRIPT_PATH}\"")));
        assert!(is_open("/") && is_open(STYLE_PATH) && is_open(SCRIPT_PATH));
        assert!(!is_open("/v1/status"));
    }

    /// Every element the script looks up by id is in the page: a missing one would only
    /// fail in a browser, on the path that reaches it.
    #[test]
    fn every_element_the_script_looks_up_is_in_the_page() {
        let ids: Vec<&str> = SCRIPT
            .split("$('")
            .skip(1)
            .filter_map(|rest| rest.split_once("')").map(|(id, _)| id))
            .collect();
        assert!(
            ids.len() > 20,
            "the script's lookups were not found: {ids:?}"
        );
        for id in [
            "page-next",
            "page-previous",
            "page-indicator",
            "critical-list",
            "service-summary",
        ] {
            assert!(ids.contains(&id), "the script does not look up #{id}");
        }
        for id in ids {
            assert!(
                PAGE.contains(&format!("id=\"{id}\"")),
                "the script looks up #{id}, which the page does not have"
            );
        }
    }

    /// The page never asks for the whole system: it reads the summary and pages.
    #[test]
    fn the_script_reads_the_summary_and_one_page_at_a_time() {
        assert!(SCRIPT.contains("summary: 'true'"));
        assert!(SCRIPT.contains("limit: String(PAGE_SIZE)"));
        assert!(SCRIPT.contains("query.set('cursor'"));
        assert!(SCRIPT.contains("query.set('name'"));
        assert!(!SCRIPT.contains("api('/v1/status')"));
    }
}
