//! `PUT /import/{file_id}` lets its caller choose file IDs: who may call it, checked before any tracker is asked
//! (the tracker here is a closed port, so a request that gets past the check answers 503 `no_tracker`).

use crate::common::{client, closed_addr, error_of, gateway};
use fdfs_common::wire::{API_KEY_HEADER, CLUSTER_SECRET_HEADER};
use fdfs_gateway::Config;

const SOME_ID: &str = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg";

async fn put(gw: &fdfs_testkit::Server, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client()
        .put(gw.url(&format!("/import/{SOME_ID}")))
        .body(vec![7u8; 1000]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    error_of(req.send().await.unwrap()).await
}

#[tokio::test]
async fn import_is_off_without_an_api_key_or_cluster_secret() {
    let gw = gateway(Config {
        trackers: vec![closed_addr()],
        ..Config::default()
    })
    .await;
    assert_eq!(put(&gw, &[]).await, (403, "forbidden".into()));
    assert_eq!(
        put(&gw, &[(API_KEY_HEADER, "anything")]).await,
        (403, "forbidden".into())
    );
}

#[tokio::test]
async fn import_needs_the_api_key_or_the_cluster_secret() {
    let gw = gateway(Config {
        trackers: vec![closed_addr()],
        api_key: Some("the-key".into()),
        cluster_secret: Some("the-secret".into()),
        ..Config::default()
    })
    .await;
    let unauthorized = (401, "unauthorized".to_owned());
    assert_eq!(put(&gw, &[]).await, unauthorized);
    assert_eq!(
        put(&gw, &[(API_KEY_HEADER, "the-secret")]).await,
        unauthorized
    );
    assert_eq!(
        put(&gw, &[(CLUSTER_SECRET_HEADER, "the-key")]).await,
        unauthorized
    );
    let passed = (503, "no_tracker".to_owned());
    assert_eq!(put(&gw, &[(API_KEY_HEADER, "the-key")]).await, passed);
    assert_eq!(
        put(&gw, &[(CLUSTER_SECRET_HEADER, "the-secret")]).await,
        passed
    );
    // A malformed ID is refused before the tracker too.
    let r = client()
        .put(gw.url("/import/group1/M00/00/00/short.jpg"))
        .header(API_KEY_HEADER, "the-key")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(r).await.0, 400);
}
