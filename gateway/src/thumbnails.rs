//! `thumbnails=150x150,300x300` on an upload (multipart field or `PUT` query): once the master is stored, each
//! size is rendered at once by a GET of its slave `<master>_<W>x<H>.<ext>` on the storage node that took the
//! upload (the node renders a configured size on its first read and stores it as a slave file, replicated like
//! any upload), and the answer lists the slaves under `thumbnails`.
//!
//! A size the node does not render (not in its `thumbnail_sizes`: `thumbnail_size_not_configured`, listing the
//! sizes it does) does not fail the upload, which is already acknowledged: its entry carries the node's `error`
//! instead of a URL. A master that is not an image gets `"skipped": true` and an `error` saying why.

use std::time::Duration;

use fdfs_common::wire::UploadResult;
use fdfs_common::FileId;
use reqwest::Method;
use serde_json::{json, Value};

use crate::error::{GatewayError, Result};
use crate::App;

/// Most sizes one upload may ask for.
pub const MAX_SIZES: usize = 16;
/// Longest wait for one render (the storage node's own deadline is shorter by default).
const RENDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Parse `150x150,300x300,200x200c` into sizes (`WxH`, optional `c` for crop; one side may be 0).
pub fn parse_sizes(value: &str) -> Result<Vec<String>> {
    let mut sizes: Vec<String> = Vec::new();
    for s in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let bad = || {
            GatewayError::BadRequest(format!(
                "invalid thumbnail size {s:?}: expected WxH or WxHc, e.g. 300x300"
            ))
        };
        let body = s.strip_suffix('c').unwrap_or(s);
        let (w, h) = body.split_once('x').ok_or_else(bad)?;
        let side = |v: &str| {
            (!v.is_empty() && v.len() <= 5 && v.bytes().all(|b| b.is_ascii_digit()))
                .then(|| v.parse::<u32>().ok())
                .flatten()
        };
        let (w, h) = (side(w).ok_or_else(bad)?, side(h).ok_or_else(bad)?);
        if w == 0 && h == 0 {
            return Err(bad());
        }
        if !sizes.iter().any(|x| x == s) {
            sizes.push(s.to_owned());
        }
    }
    if sizes.len() > MAX_SIZES {
        return Err(GatewayError::BadRequest(format!(
            "at most {MAX_SIZES} thumbnail sizes per upload"
        )));
    }
    Ok(sizes)
}

/// The upload answers as JSON, each with `thumbnails` when sizes were asked for.
pub(crate) async fn answers(
    app: &App,
    uploaded: Vec<(UploadResult, String, Vec<String>)>,
) -> Vec<Value> {
    let mut out = Vec::with_capacity(uploaded.len());
    for (result, addr, sizes) in uploaded {
        let thumbs = if sizes.is_empty() {
            None
        } else {
            Some(render_all(app, &result, &addr, &sizes).await)
        };
        let mut v = serde_json::to_value(&result).unwrap_or(Value::Null);
        if let (Some(t), Value::Object(map)) = (thumbs, &mut v) {
            map.insert("thumbnails".into(), Value::Array(t));
        }
        out.push(v);
    }
    out
}

async fn render_all(app: &App, master: &UploadResult, addr: &str, sizes: &[String]) -> Vec<Value> {
    let base = master
        .url
        .split('?')
        .next()
        .unwrap_or_default()
        .strip_suffix(&format!("/{}", master.file_id))
        .unwrap_or_default()
        .to_owned();
    let mut out = Vec::with_capacity(sizes.len());
    let ext = master.file_id.name.ext().map(str::to_ascii_lowercase);
    if !matches!(
        ext.as_deref(),
        Some("jpg" | "jpeg" | "png" | "gif" | "webp")
    ) {
        // Not a picture by its name: nothing to ask the node.
        let why = format!(
            "thumbnails skipped: they are rendered from images (jpeg, png, gif, webp) only, and this upload is \
             {} named .{}; the file itself is stored",
            master.content_type,
            ext.as_deref().unwrap_or("(no extension)")
        );
        return sizes
            .iter()
            .map(|size| {
                json!({"size": size, "skipped": true,
                       "error": {"code": "not_an_image", "message": why}})
            })
            .collect();
    }
    for size in sizes {
        let slave = match master
            .file_id
            .slave(&format!("_{size}"), master.file_id.name.ext())
        {
            Ok(s) => s,
            Err(e) => {
                out.push(json!({"size": size, "error": {"code": "bad_request", "message": e.to_string()}}));
                continue;
            }
        };
        out.push(match render_one(app, addr, &slave).await {
            Ok(bytes) => {
                let token = app.config.anti_leech_secret.as_ref().map(|secret| {
                    format!(
                        "?{}",
                        fdfs_common::token::query(&slave, secret, fdfs_common::time::unix_now())
                    )
                });
                json!({
                    "size": size,
                    "file_id": slave,
                    "url": format!("{base}/{slave}{}", token.unwrap_or_default()),
                    "bytes": bytes,
                })
            }
            Err(mut error) => {
                // A master that is not an image: nothing to render, said as such (the upload itself stands).
                if error["code"] == "not_an_image" {
                    let why = error["message"].as_str().unwrap_or_default().to_owned();
                    error["message"] = Value::String(format!(
                        "thumbnails skipped: they are rendered from images (jpeg, png, gif, webp) only, and \
                         this upload is not one ({why}); the file itself is stored"
                    ));
                    json!({"size": size, "file_id": slave, "skipped": true, "error": error})
                } else {
                    json!({"size": size, "file_id": slave, "error": error})
                }
            }
        });
    }
    out
}

/// GET the slave on the node (rendering it there); its size, or the node's JSON error.
async fn render_one(app: &App, addr: &str, slave: &FileId) -> std::result::Result<u64, Value> {
    let mut url = format!("http://{addr}/{slave}");
    if let Some(secret) = &app.config.anti_leech_secret {
        url.push('?');
        url.push_str(&fdfs_common::token::query(
            slave,
            secret,
            fdfs_common::time::unix_now(),
        ));
    }
    let fail = |code: &str, message: String| json!({"code": code, "message": message});
    let fetched = tokio::time::timeout(RENDER_TIMEOUT, async {
        let resp = app
            .storage
            .fetch(Method::GET, &url, reqwest::header::HeaderMap::new())
            .await?;
        let status = resp.status();
        let body = resp.bytes().await?;
        Ok::<_, reqwest::Error>((status, body))
    })
    .await;
    match fetched {
        Err(_) => Err(fail(
            "gateway_timeout",
            "the thumbnail was not rendered in time".into(),
        )),
        Ok(Err(e)) => {
            tracing::warn!(storage = addr, error = %e, "thumbnail render request failed");
            Err(fail("bad_gateway", "storage node unreachable".into()))
        }
        Ok(Ok((status, body))) if status.is_success() => Ok(body.len() as u64),
        Ok(Ok((status, body))) => Err(serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").cloned())
            .unwrap_or_else(|| fail("bad_gateway", format!("storage node answered {status}")))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_validated() {
        assert_eq!(
            parse_sizes(" 150x150, 300x300c,800x0,150x150").unwrap(),
            ["150x150", "300x300c", "800x0"]
        );
        assert!(parse_sizes("").unwrap().is_empty());
        for bad in ["0x0", "abc", "1x", "x1", "-1x2", "123456x1", "10x10,big"] {
            assert!(parse_sizes(bad).is_err(), "{bad}");
        }
        let many = (1..=17)
            .map(|i| format!("{i}x{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(parse_sizes(&many).is_err());
    }
}
