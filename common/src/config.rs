//! Config files: TOML, unknown keys rejected. Precedence is flags > `FDFS_*` env > file > defaults; clap
//! handles flags and env (every flag declares `env = "FDFS_..."` and is an `Option`), this module the file.

use std::path::Path;

use serde::de::DeserializeOwned;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read (missing, unreadable).
    #[error("reading config {path}: {source}")]
    Read {
        /// The config file as given.
        path: String,
        /// Why reading failed.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("config {path}: {source}")]
    Parse {
        /// The config file as given.
        path: String,
        /// What is wrong, with line and column.
        source: toml::de::Error,
    },
}

/// Load a TOML config file, or the defaults when no file is given. Structs should use
/// `#[serde(default, deny_unknown_fields)]` so that a typo is an error, not a silent default.
pub fn load<T: DeserializeOwned + Default>(path: Option<&Path>) -> Result<T, ConfigError> {
    let Some(path) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.display().to_string(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.display().to_string(),
        source,
    })
}

/// Parse a size such as `10GiB`, `512MB`, `1048576` or `10%`-free (the latter returned as `Size::Percent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Size {
    /// An absolute number of bytes (`K`/`M`/`G`/`T` are powers of 1000, `KiB`... powers of 1024).
    Bytes(u64),
    /// A share of a store path's total size, 0 to 100.
    Percent(u8),
}

impl std::str::FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            let v: u8 = p
                .trim()
                .parse()
                .map_err(|_| format!("bad percentage {s:?}"))?;
            if v > 100 {
                return Err(format!("percentage over 100: {s:?}"));
            }
            return Ok(Size::Percent(v));
        }
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let num: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
        let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kb" => 1000,
            "kib" => 1 << 10,
            "m" | "mb" => 1_000_000,
            "mib" => 1 << 20,
            "g" | "gb" => 1_000_000_000,
            "gib" => 1 << 30,
            "t" | "tb" => 1_000_000_000_000,
            "tib" => 1 << 40,
            _ => return Err(format!("bad size unit in {s:?}")),
        };
        num.checked_mul(mult)
            .map(Size::Bytes)
            .ok_or_else(|| format!("size too large {s:?}"))
    }
}

impl<'de> serde::Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(serde::Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(Size::Bytes(n)),
            Raw::S(s) => s.parse().map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!("10GiB".parse(), Ok(Size::Bytes(10 << 30)));
        assert_eq!("512MB".parse(), Ok(Size::Bytes(512_000_000)));
        assert_eq!("1048576".parse(), Ok(Size::Bytes(1_048_576)));
        assert_eq!("10%".parse(), Ok(Size::Percent(10)));
        assert!("101%".parse::<Size>().is_err());
        assert!("12 parsecs".parse::<Size>().is_err());
    }

    #[derive(Debug, Default, serde::Deserialize)]
    #[serde(default, deny_unknown_fields)]
    struct Demo {
        listen: Option<String>,
    }

    #[test]
    fn unknown_keys_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:1\"\n").unwrap();
        let d: Demo = load(Some(&p)).unwrap();
        assert_eq!(d.listen.as_deref(), Some("127.0.0.1:1"));
        std::fs::write(&p, "lisen = \"x\"\n").unwrap();
        assert!(load::<Demo>(Some(&p)).is_err());
    }
}
