//! The control protocol: one JSON object per line each way.

use serde::{Deserialize, Serialize};

use crate::config::Direction;
use crate::dataplane::stats::Stats;
use crate::filter::rules::FilterView;

/// Longest request line accepted.
pub(super) const MAX_REQUEST: usize = 64 * 1024;

#[derive(Debug, Serialize, Deserialize)]
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
