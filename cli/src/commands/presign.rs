//! `fdfs presign`: a presigned URL of the gateway's S3 door (Signature V4 in the query), minted locally with an
//! access key, so that a browser, `curl` or a script without the key can GET, PUT (`curl -T`) or DELETE one
//! object until it expires: what `aws s3 presign` does, for any method.

use fdfs_gateway::s3::{sigv4, S3Key};

use crate::error::{CliError, Result};

/// The longest validity S3 allows a SigV4 presigned URL (7 days).
const MAX_EXPIRES: u64 = 604_800;

/// `fdfs presign` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The object: `bucket/key`, `/bucket/key` or `s3://bucket/key` (a bucket alone signs a bucket request,
    /// e.g. `--method PUT` creates it).
    pub object: String,
    /// The S3 door's base URL (`fdfs up` prints it).
    #[arg(long, env = "FDFS_S3_ENDPOINT", value_name = "URL")]
    pub endpoint: String,
    /// HTTP method the URL is for.
    #[arg(long, default_value = "GET", value_parser = ["GET", "HEAD", "PUT", "DELETE"])]
    pub method: String,
    /// Seconds the URL is valid for (at most 604800, 7 days).
    #[arg(long, default_value_t = 3600)]
    pub expires: u64,
    /// The access key that signs.
    #[arg(long, env = "FDFS_S3_ACCESS_KEY")]
    pub access_key: String,
    /// Its secret.
    #[arg(long, env = "FDFS_S3_SECRET_KEY", hide_env_values = true)]
    pub secret_key: String,
    /// The region in the signature's scope (the door accepts any).
    #[arg(long, default_value = "us-east-1")]
    pub region: String,
    /// Sign as of this unix time instead of now.
    #[arg(long)]
    pub ts: Option<u64>,
}

/// Print the presigned URL.
pub fn run(args: Args) -> Result<()> {
    println!("{}", url(&args)?);
    Ok(())
}

fn url(args: &Args) -> Result<String> {
    if args.expires == 0 || args.expires > MAX_EXPIRES {
        return Err(CliError::Usage(format!(
            "--expires must be 1..={MAX_EXPIRES} seconds (S3's limit), not {}",
            args.expires
        )));
    }
    let endpoint = args.endpoint.trim_end_matches('/');
    if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
        return Err(CliError::Usage(format!(
            "--endpoint must be the door's http:// or https:// base URL, not {endpoint:?}"
        )));
    }
    let object = args.object.strip_prefix("s3://").unwrap_or(&args.object);
    let object = object.trim_start_matches('/');
    if object.is_empty() || object.starts_with('/') {
        return Err(CliError::Usage(format!(
            "{:?} names no bucket: give bucket/key",
            args.object
        )));
    }
    let key = S3Key {
        access_key: args.access_key.clone(),
        secret_key: args.secret_key.clone(),
        buckets: Vec::new(),
        read_only: false,
    };
    let now = args.ts.unwrap_or_else(fdfs_common::time::unix_now);
    Ok(sigv4::presign(
        &key,
        &args.region,
        &args.method,
        endpoint,
        &format!("/{object}"),
        &[],
        now as i64,
        args.expires as i64,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(object: &str, expires: u64) -> Args {
        Args {
            object: object.into(),
            endpoint: "http://127.0.0.1:9000/".into(),
            method: "GET".into(),
            expires,
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "secret".into(),
            region: "us-east-1".into(),
            ts: Some(1_700_000_000),
        }
    }

    #[test]
    fn every_spelling_of_an_object_signs_the_same_url() {
        let want = url(&args("shop/a b.jpg", 60)).unwrap();
        assert!(
            want.starts_with("http://127.0.0.1:9000/shop/a%20b.jpg?X-Amz-Algorithm="),
            "{want}"
        );
        assert!(want.contains("X-Amz-Expires=60&"), "{want}");
        for spelling in ["/shop/a b.jpg", "s3://shop/a b.jpg"] {
            assert_eq!(url(&args(spelling, 60)).unwrap(), want);
        }
    }

    #[test]
    fn bad_arguments_say_what_to_give() {
        for (object, expires) in [("", 60), ("s3://", 60), ("shop/k", 0), ("shop/k", 604_801)] {
            assert!(matches!(
                url(&args(object, expires)),
                Err(CliError::Usage(_))
            ));
        }
        let mut a = args("shop/k", 60);
        a.endpoint = "127.0.0.1:9000".into();
        assert!(matches!(url(&a), Err(CliError::Usage(_))));
    }
}
