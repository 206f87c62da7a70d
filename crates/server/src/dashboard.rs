//! The dashboard: static files built into the binary (no CDN; works offline). uPlot
//! (MIT, `assets/uPlot.LICENSE`) draws the charts.

use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;

use crate::admin::AdminState;

/// (path, content type, bytes) of every asset.
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "/assets/dashboard.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/dashboard.js"),
    ),
    (
        "/assets/lineage.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/lineage.js"),
    ),
    (
        "/assets/dashboard.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/dashboard.css"),
    ),
    (
        "/assets/uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_bytes!("../assets/uPlot.iife.min.js"),
    ),
    (
        "/assets/uPlot.min.css",
        "text/css; charset=utf-8",
        include_bytes!("../assets/uPlot.min.css"),
    ),
];

const PAGE: &[u8] = include_bytes!("../assets/dashboard.html");

/// Routes for the page and its assets.
pub fn router() -> Router<Arc<AdminState>> {
    let mut r = Router::new().route(
        "/",
        get(|| async {
            ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], PAGE).into_response()
        }),
    );
    for &(path, ct, bytes) in ASSETS {
        r = r.route(
            path,
            get(move || async move { ([(header::CONTENT_TYPE, ct)], bytes).into_response() }),
        );
    }
    r
}
