//! What every answer to hostile input must be, collected over a whole family of inputs so that one run reports
//! every violation: no 5xx except 502/503/504 (and 505 for an HTTP version that does not exist); an error body
//! that is the JSON error shape `{"error": {"code", "message"}}`; a 4xx (or a close without an answer) where a
//! refusal is required; and a 200 from a storage node only ever carrying the bytes of a file that was uploaded.

use std::collections::BTreeMap;

use fdfs_testkit::raw::Answer;

/// What an answer may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Only the general rules (no bad 5xx, JSON error shape).
    Any,
    /// A 4xx, or the server closing without an answer.
    Refused,
}

impl Expect {
    /// [`Expect::Refused`] when `must`, else [`Expect::Any`].
    pub fn refused_if(must: bool) -> Expect {
        if must {
            Expect::Refused
        } else {
            Expect::Any
        }
    }
}

/// The violations found so far.
pub struct Judge {
    problems: Vec<String>,
    checked: usize,
    /// How many answers had each status (`None`: closed without one), for the log.
    statuses: BTreeMap<Option<u16>, usize>,
    /// Bytes of every uploaded file: a storage 200 must carry one of them.
    files: Vec<Vec<u8>>,
}

impl Judge {
    /// A judge that knows the bytes of every uploaded file.
    pub fn new(files: Vec<Vec<u8>>) -> Judge {
        Judge {
            problems: Vec::new(),
            checked: 0,
            statuses: BTreeMap::new(),
            files,
        }
    }

    /// Check one answer; `what` names the request (it starts with `storage GET` for a storage download).
    pub fn check(&mut self, what: &str, a: &Answer, expect: Expect) {
        self.checked += 1;
        *self.statuses.entry(a.status).or_default() += 1;
        let mut bad = Vec::new();
        if let Some(s) = a.status {
            let allowed_5xx = matches!(s, 502..=504) || (s == 505 && what.contains("version"));
            if s >= 500 && !allowed_5xx {
                bad.push(format!("server error {s}"));
            }
            let json = a
                .header("content-type")
                .is_some_and(|c| c.starts_with("application/json"));
            if s >= 400 && json && !a.body.is_empty() && !error_shape_ok(&a.body) {
                bad.push("JSON error body without {\"error\":{\"code\",\"message\"}}".into());
            }
            if s >= 400 && !json && !a.body.is_empty() {
                bad.push(format!(
                    "error body that is not JSON ({:?})",
                    a.header("content-type")
                ));
            }
            if expect == Expect::Refused && !(400..500).contains(&s) {
                bad.push(format!("expected a 4xx refusal, got {s}"));
            }
            if s == 200
                && what.starts_with("storage GET")
                && !what.contains("/v1/")
                && !what.contains("/health")
                && !self.files.contains(&a.body)
                && !a.body.is_empty()
            {
                bad.push(format!(
                    "200 with {} bytes that are no uploaded file",
                    a.body.len()
                ));
            }
        }
        if !bad.is_empty() {
            self.problems
                .push(format!("{what}: {} -- {}", bad.join("; "), a.summary()));
        }
    }

    /// Print the tally and fail with every violation found.
    pub fn assert_clean(self) {
        eprintln!(
            "{} hostile requests checked; answers by status: {:?}",
            self.checked, self.statuses
        );
        assert!(
            self.problems.is_empty(),
            "{} of {} hostile requests were mishandled:\n{}",
            self.problems.len(),
            self.checked,
            self.problems.join("\n")
        );
    }
}

fn error_shape_ok(body: &[u8]) -> bool {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return false;
    };
    let e = &v["error"];
    e["code"].is_string() && e["message"].is_string() && v.as_object().is_some_and(|o| o.len() == 1)
}

/// Printable form of a target for messages.
pub fn show(target: &[u8]) -> String {
    let s = String::from_utf8_lossy(target);
    if s.len() > 120 {
        format!("{}...({} bytes)", &s[..120], s.len())
    } else {
        s.into_owned()
    }
}
