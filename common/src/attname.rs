//! `?attname=NAME` on a download, as fastdfs-nginx-module has it: the answer carries
//! `Content-Disposition: attachment` with that file name, so a browser saves the file under its original name
//! instead of the generated one. The storage nodes, the gateway (passed on in its redirect) and the shipped
//! nginx config all honour it.

use axum::http::HeaderValue;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};

/// Longest name accepted (longer ones are ignored, as a malformed value is).
pub const MAX_LEN: usize = 255;

/// Characters kept as they are in RFC 5987's `filename*` (attr-char), everything else percent-encoded.
const ATTR: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'!')
    .remove(b'#')
    .remove(b'$')
    .remove(b'&')
    .remove(b'+')
    .remove(b'-')
    .remove(b'.')
    .remove(b'^')
    .remove(b'_')
    .remove(b'`')
    .remove(b'|')
    .remove(b'~');

/// The decoded `attname` of a query string; `None` when absent, empty or too long. A path in it is cut to its
/// last segment.
pub fn from_query(query: Option<&str>) -> Option<String> {
    let (_, value) = form_urlencoded::parse(query?.as_bytes()).find(|(k, _)| k == "attname")?;
    if value.chars().any(char::is_control) {
        return None;
    }
    let name = value.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    (!name.is_empty() && name.len() <= MAX_LEN).then(|| name.to_owned())
}

/// `attachment; filename="<ASCII fallback>"; filename*=UTF-8''<percent-encoded name>` (RFC 6266).
pub fn content_disposition(name: &str) -> HeaderValue {
    let fallback: String = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() && c != '"' && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let value = format!(
        "attachment; filename=\"{fallback}\"; filename*=UTF-8''{}",
        utf8_percent_encode(name, ATTR)
    );
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("attachment"))
}

/// `?attname=` and its value, percent-encoded, for passing it on in a URL (`&` or `?` is the caller's).
pub fn query_pair(name: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair("attname", name)
        .finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_decoded_and_encoded() {
        assert_eq!(
            from_query(Some("token=x&attname=photo%201.jpg")).as_deref(),
            Some("photo 1.jpg")
        );
        assert_eq!(
            from_query(Some("attname=a%2Fb%2Fc.jpg")).as_deref(),
            Some("c.jpg")
        );
        assert_eq!(from_query(Some("attname=")), None);
        assert_eq!(from_query(Some("attname=%0Abad")), None);
        assert_eq!(from_query(None), None);
        assert_eq!(
            content_disposition("photo 1.jpg"),
            "attachment; filename=\"photo 1.jpg\"; filename*=UTF-8''photo%201.jpg"
        );
        assert_eq!(
            content_disposition("café \"x\".jpg"),
            "attachment; filename=\"caf_ _x_.jpg\"; filename*=UTF-8''caf%C3%A9%20%22x%22.jpg"
        );
        assert_eq!(query_pair("café.jpg"), "attname=caf%C3%A9.jpg");
    }
}
