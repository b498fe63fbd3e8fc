//! `PUT /import/{file_id}` lets its caller choose file IDs: who may call it, checked before any tracker is asked
//! (the tracker here is a closed port, so a request that gets past the check answers 503 `no_tracker`).

use crate::common::gateway_for;
use fdfs_common::wire::{API_KEY_HEADER, CLUSTER_SECRET_HEADER};
use fdfs_testkit::{client, closed_addr, RequestExt, Server};

const SOME_ID: &str = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg";

async fn put(gw: &Server, headers: &[(&str, &str)]) -> (u16, String) {
    let mut req = client()
        .put(gw.url(&format!("/import/{SOME_ID}")))
        .body(vec![7u8; 1000]);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    req.error().await
}

#[tokio::test]
async fn import_is_off_without_an_api_key_or_cluster_secret() {
    let gw = gateway_for(vec![closed_addr()], |_| {}).await;
    assert_eq!(put(&gw, &[]).await, (403, "forbidden".into()));
    assert_eq!(
        put(&gw, &[(API_KEY_HEADER, "anything")]).await,
        (403, "forbidden".into())
    );
}

#[tokio::test]
async fn import_needs_the_api_key_or_the_cluster_secret() {
    let gw = gateway_for(vec![closed_addr()], |c| {
        c.api_key = Some("the-key".into());
        c.cluster_secret = Some("the-secret".into());
    })
    .await;
    let unauthorized = (401, "unauthorized".to_owned());
    let passed = (503, "no_tracker".to_owned());
    for (header, value, want) in [
        (None, "", &unauthorized),
        (Some(API_KEY_HEADER), "the-secret", &unauthorized),
        (Some(CLUSTER_SECRET_HEADER), "the-key", &unauthorized),
        (Some(API_KEY_HEADER), "the-key", &passed),
        (Some(CLUSTER_SECRET_HEADER), "the-secret", &passed),
    ] {
        let headers: Vec<(&str, &str)> = header.map(|h| (h, value)).into_iter().collect();
        assert_eq!(&put(&gw, &headers).await, want, "{header:?}: {value}");
    }
    // A malformed ID is refused before the tracker too.
    let r = client()
        .put(gw.url("/import/group1/M00/00/00/short.jpg"))
        .header(API_KEY_HEADER, "the-key")
        .body("x");
    assert_eq!(r.error().await.0, 400);
}
