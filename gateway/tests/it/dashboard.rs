//! `GET /dashboard` on a real in-process cluster (the browser side is tested by `e2e/dashboard.test.mjs`; the
//! counters of `GET /dashboard/stats` by `cli/tests/it/dashboard.rs`, against separate processes: servers in
//! this process share one metrics recorder, so tests running alongside would move each other's counters).

use crate::common::{cluster, html, Setup};

#[tokio::test]
async fn dashboard_page_is_self_contained_html() {
    let cl = cluster(Setup::default()).await;
    let html = html(&cl.gateway, "/dashboard").await;
    assert!(html.contains("/dashboard/stats"), "the page polls its JSON");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external assets"
    );
}
