//! FastDFS-compatible anti-leech tokens: `token = hex(md5(path_in_group + secret + ts))`, valid while
//! `now - ts <= ttl` (FastDFS `http.anti_steal.token_ttl`).

use md5::{Digest, Md5};

use crate::fileid::FileId;

/// The token for a file at unix time `ts`.
pub fn make(id: &FileId, secret: &str, ts: u64) -> String {
    let mut h = Md5::new();
    h.update(id.path_in_group().as_bytes());
    h.update(secret.as_bytes());
    h.update(ts.to_string().as_bytes());
    hex::encode(h.finalize())
}

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// The URL lacks `token` or `ts`.
    #[error("missing token or ts")]
    Missing,
    /// `ts` is older than the TTL, or more than 5 minutes in the future.
    #[error("token expired")]
    Expired,
    /// `ts` is not a number, or the token does not match the file, secret and `ts`.
    #[error("invalid token")]
    Invalid,
}

/// Check a token given as query values.
pub fn verify(
    id: &FileId,
    secret: &str,
    token: Option<&str>,
    ts: Option<&str>,
    ttl_secs: u64,
    now: u64,
) -> Result<(), TokenError> {
    let (Some(token), Some(ts)) = (token, ts) else {
        return Err(TokenError::Missing);
    };
    let ts_num: u64 = ts.parse().map_err(|_| TokenError::Invalid)?;
    // Allow a little clock skew into the future, never more than the TTL into the past.
    if ts_num > now + 300 || now.saturating_sub(ts_num) > ttl_secs {
        return Err(TokenError::Expired);
    }
    let mut h = Md5::new();
    h.update(id.path_in_group().as_bytes());
    h.update(secret.as_bytes());
    h.update(ts.as_bytes());
    let expected = hex::encode(h.finalize());
    if crate::constant_time_eq(expected.as_bytes(), token.to_ascii_lowercase().as_bytes()) {
        Ok(())
    } else {
        Err(TokenError::Invalid)
    }
}

/// Query string (`token=..&ts=..`) for a signed URL valid from now.
pub fn query(id: &FileId, secret: &str, now: u64) -> String {
    format!("token={}&ts={now}", make(id, secret, now))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_round_trip_and_expiry() {
        let id: FileId = "group1/M00/00/00/wKgAA1qCJbeAQ3sLAABe0xvpx3Q419.jpg"
            .parse()
            .unwrap();
        let t = make(&id, "s3cret", 1000);
        assert_eq!(t.len(), 32);
        assert_eq!(
            verify(&id, "s3cret", Some(&t), Some("1000"), 60, 1030),
            Ok(())
        );
        assert_eq!(
            verify(&id, "s3cret", Some(&t), Some("1000"), 60, 2000),
            Err(TokenError::Expired)
        );
        assert_eq!(
            verify(&id, "other", Some(&t), Some("1000"), 60, 1030),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            verify(&id, "s3cret", Some(&t), Some("1001"), 60, 1030),
            Err(TokenError::Invalid)
        );
        assert_eq!(
            verify(&id, "s3cret", None, Some("1000"), 60, 1030),
            Err(TokenError::Missing)
        );
    }
}
