//! AWS Signature Version 4 for the two requests s3load makes: a PUT signed in its `Authorization` header with
//! `UNSIGNED-PAYLOAD`, and a presigned GET URL. Only what those need: a path of unreserved characters and `/`,
//! no query on signed requests, the headers `host`, `x-amz-content-sha256` and `x-amz-date`.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The payload hash s3load sends with every signed request: the body is not hashed, by either system.
pub const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// One key pair at one endpoint.
pub struct Signer {
    access_key: String,
    secret_key: String,
    region: String,
    /// The `Host` header the requests carry (`127.0.0.1:9000`), signed.
    host: String,
    /// The signing key of [`Self::cached_day`], derived once a day as SDKs do.
    cached_day: String,
    cached_key: Vec<u8>,
}

impl Signer {
    /// A signer for requests to `host`.
    pub fn new(access_key: &str, secret_key: &str, region: &str, host: &str) -> Self {
        Signer {
            access_key: access_key.to_owned(),
            secret_key: secret_key.to_owned(),
            region: region.to_owned(),
            host: host.to_owned(),
            cached_day: String::new(),
            cached_key: Vec::new(),
        }
    }

    fn scope(&self, day: &str) -> String {
        format!("{day}/{}/s3/aws4_request", self.region)
    }

    fn signature(&mut self, amz_date: &str, canonical_request: &str) -> String {
        let day = &amz_date[..8];
        if self.cached_day != day {
            let k = hmac(
                format!("AWS4{}", self.secret_key).as_bytes(),
                day.as_bytes(),
            );
            let k = hmac(&k, self.region.as_bytes());
            let k = hmac(&k, b"s3");
            self.cached_key = hmac(&k, b"aws4_request");
            self.cached_day = day.to_owned();
        }
        let to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{}\n{}",
            self.scope(day),
            hex::encode(Sha256::digest(canonical_request.as_bytes()))
        );
        hex::encode(hmac(&self.cached_key, to_sign.as_bytes()))
    }

    /// The `Authorization` header of a request `method path` without a query, carrying `x-amz-date: amz_date`
    /// and `x-amz-content-sha256: UNSIGNED-PAYLOAD`.
    pub fn authorization(&mut self, method: &str, path: &str, amz_date: &str) -> String {
        let signed = "host;x-amz-content-sha256;x-amz-date";
        let canonical = format!(
            "{method}\n{}\n\nhost:{}\nx-amz-content-sha256:{UNSIGNED_PAYLOAD}\nx-amz-date:{amz_date}\n\n{signed}\n{UNSIGNED_PAYLOAD}",
            uri_encode(path, true),
            self.host
        );
        let signature = self.signature(amz_date, &canonical);
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={signed}, Signature={signature}",
            self.access_key,
            self.scope(&amz_date[..8])
        )
    }

    /// A presigned URL (`http://host/path?X-Amz-...`) for `method path`, valid `expires_s` seconds from
    /// `amz_date`.
    pub fn presign(&mut self, method: &str, path: &str, amz_date: &str, expires_s: u32) -> String {
        let credential = format!("{}/{}", self.access_key, self.scope(&amz_date[..8]));
        // Already in canonical (sorted) order.
        let query = format!(
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={}&X-Amz-Date={amz_date}&X-Amz-Expires={expires_s}\
             &X-Amz-SignedHeaders=host",
            uri_encode(&credential, false)
        );
        let path = uri_encode(path, true);
        let canonical = format!(
            "{method}\n{path}\n{query}\nhost:{}\n\nhost\n{UNSIGNED_PAYLOAD}",
            self.host
        );
        let signature = self.signature(amz_date, &canonical);
        format!(
            "http://{}{path}?{query}&X-Amz-Signature={signature}",
            self.host
        )
    }
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

/// SigV4's URI encoding: unreserved characters as they are, `/` too in a path, every other byte `%XX`.
pub fn uri_encode(s: &str, path: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'_' | b'.' | b'~')
            || (path && b == b'/')
        {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Now as `x-amz-date` wants it: `20261206T050102Z`.
pub fn amz_date_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    amz_date(secs)
}

/// `secs` since the epoch as `YYYYMMDDTHHMMSSZ` (UTC, proleptic Gregorian calendar).
pub fn amz_date(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Days since 1970-01-01 to a civil date, counting in 400-year eras that start on March 1st.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_format_in_utc() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(1_369_353_600), "20130524T000000Z");
        assert_eq!(amz_date(1_798_678_861), "20261231T010101Z");
    }

    /// AWS's documented example of a presigned GET (S3 API reference, "Authenticating Requests: Using Query
    /// Parameters"), with its published signature.
    #[test]
    fn the_documented_presigned_url_signs_as_aws_does() {
        let mut s = Signer::new(
            "AKIAIOSFODNN7EXAMPLE",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            "us-east-1",
            "examplebucket.s3.amazonaws.com",
        );
        let url = s.presign("GET", "/test.txt", "20130524T000000Z", 86_400);
        assert!(
            url.ends_with(
                "X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404"
            ),
            "{url}"
        );
    }
}
