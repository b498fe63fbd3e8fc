//! `GET /dashboard` and `GET /dashboard/stats` on a real in-process cluster (the browser side is tested by
//! `e2e/dashboard.test.mjs`).

use crate::common::{client, cluster, eventually, Setup};
use serde_json::Value;

async fn stats(c: &reqwest::Client, gw: &crate::common::Server) -> Value {
    let r = c.get(gw.url("/dashboard/stats")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Sum of one counter over every node in a stats answer.
fn total(s: &Value, key: &str) -> u64 {
    s["nodes"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n[key].as_u64().unwrap())
        .sum()
}

#[tokio::test]
async fn dashboard_page_is_self_contained_html() {
    let cl = cluster(Setup::default()).await;
    let r = client()
        .get(cl.gateway.url("/dashboard"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = r.text().await.unwrap();
    assert!(html.contains("/dashboard/stats"), "the page polls its JSON");
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "no external assets"
    );
}

#[tokio::test]
async fn stats_show_every_member_and_count_uploads_and_downloads() {
    let cl = cluster(Setup {
        members: 2,
        ..Setup::default()
    })
    .await;
    let (gw, c) = (&cl.gateway, client());
    let before = eventually(30, "both members in the stats", || {
        let c = c.clone();
        async move {
            let s = stats(&c, gw).await;
            let members = s["cluster"]["groups"][0]["members"].as_array()?.len();
            let nodes = s["nodes"].as_object()?.len();
            (members == 2 && nodes == 2).then_some(s)
        }
    })
    .await;
    assert!(before["time_ms"].as_u64().unwrap() > 0);

    let r = c
        .put(gw.url("/upload/dash.txt"))
        .body("dashboard counts this")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["file_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let location = c
        .get(gw.url(&format!("/{id}")))
        .send()
        .await
        .unwrap()
        .headers()["location"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_eq!(c.get(&location).send().await.unwrap().status(), 200);

    let after = stats(&c, gw).await;
    assert!(total(&after, "uploads") > total(&before, "uploads"));
    assert!(total(&after, "downloads") > total(&before, "downloads"));
    assert!(after["time_ms"].as_u64() >= before["time_ms"].as_u64());
}
