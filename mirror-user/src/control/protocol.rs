//! The control protocol: one JSON object per line each way.

use serde::{Deserialize, Serialize};

use crate::config::Direction;
use crate::dataplane::stats::Stats;
use crate::filter::rules::FilterView;

/// Longest request line accepted.
pub(super) const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    Stats,
    RulesList,
    RulesAdd {
        filter: String,
        rule: String,
    },
    RulesDelete {
        filter: String,
        number: u16,
        direction: Direction,
    },
    Reload,
    /// Test clock: moves the fake clock to `time` (RFC 3339) and switches
    /// the schedules; refused unless the daemon started with MIRROR_FAKE_NOW.
    SetTime {
        time: String,
    },
}

impl Request {
    /// One request line (without its newline) as the daemon reads it, or
    /// why it is not one (for the error reply).
    pub fn decode(line: &[u8]) -> Result<Request, String> {
        if line.len() > MAX_REQUEST {
            return Err(format!("request too long: more than {MAX_REQUEST} bytes"));
        }
        let Ok(text) = std::str::from_utf8(line) else {
            return Err(
                "bad request: not UTF-8 text; expected one JSON object per line, \
                        e.g. {\"cmd\":\"stats\"}"
                    .into(),
            );
        };
        serde_json::from_str(text)
            .map_err(|e| format!("bad request: {e}; expected e.g. {{\"cmd\":\"stats\"}}"))
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub stats: Option<Stats>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub filters: Option<Vec<FilterView>>,
    /// After a rule change or reload: rules in force per source.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub rules: Option<Vec<(String, usize)>>,
    /// After a reload: what it started, stopped and restarted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub changes: Option<String>,
}

impl Reply {
    pub(super) fn error(msg: impl Into<String>) -> Self {
        Reply {
            ok: false,
            error: Some(msg.into()),
            ..Default::default()
        }
    }

    pub(super) fn updated(result: anyhow::Result<Vec<(String, usize)>>) -> Self {
        match result {
            Ok(rules) => Reply {
                ok: true,
                rules: Some(rules),
                ..Default::default()
            },
            Err(e) => Reply::error(format!("{e:#}; the running rules stay in force")),
        }
    }
}
