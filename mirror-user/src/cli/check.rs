//! `mirror check -c FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use mirror_user::config::{Config, IngressHook, SourceMode, TargetSpec};
use mirror_user::kernel::holders;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The config file to validate.
    #[arg(short, long, value_name = "FILE")]
    pub config: PathBuf,
    /// Check the file alone, not against this host (for a config written
    /// for another machine: CI, an image build, a fleet's ConfigMap); the
    /// warnings the file alone shows are still given.
    #[arg(long)]
    pub file_only: bool,
}

pub fn main(a: Args) -> Result<ExitCode> {
    match mirror_user::config::load(&a.config) {
        Ok(c) => {
            let found = if a.file_only { file(&c) } else { host(&c) };
            for w in &found.warnings {
                eprintln!("{}: warning: {w}", a.config.display());
            }
            for e in &found.errors {
                eprintln!("{}: {e}", a.config.display());
            }
            if !found.errors.is_empty() {
                eprintln!(
                    "the file is valid, but `mirror run` would fail here: {} problem{}",
                    found.errors.len(),
                    if found.errors.len() == 1 { "" } else { "s" }
                );
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "{}: ok ({} sources, {} filters, {} rules, {} targets, {} sessions)",
                a.config.display(),
                c.sources.len(),
                c.filters.len(),
                c.filters.iter().map(|f| f.rules.len()).sum::<usize>(),
                c.targets.len(),
                c.sessions.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{e}");
            let n = e.diagnostics().len();
            if n > 1 {
                eprintln!("{n} errors");
            }
            Ok(ExitCode::FAILURE)
        }
    }
}

/// What `mirror check` finds beyond the file, in this host's network
/// namespace, without attaching or opening anything.
#[derive(Debug, Default)]
pub struct Findings {
    /// Each would make `mirror run` fail.
    pub errors: Vec<String>,
    /// Each is legal but probably not what was meant.
    pub warnings: Vec<String>,
}

/// What the file alone shows, wherever it is checked (`--file-only`
/// included): warnings about targets no session uses, directions no rule
/// can match and schedule windows that override nothing. None needs this
/// host, and a valid file has no errors.
pub fn file(config: &Config) -> Findings {
    let mut f = Findings::default();
    for t in config.clone().prune_unused_targets() {
        f.warnings.push(format!(
            "{t} is used by no session: `mirror run` does not open it"
        ));
    }
    f.warnings.extend(config.warnings());
    f
}

/// [`file`], then `config` against this host: every interface exists, every
/// pcapng directory exists and takes a new file, no other XDP program or
/// AF_XDP socket holds what a source or interface target needs (another XDP
/// program where `ingress_hook = "auto"` may still clone at tcx is a
/// warning).
pub fn host(config: &Config) -> Findings {
    let mut f = file(config);
    let mut used = config.clone();
    used.prune_unused_targets();
    let ifindex = |name: &str| mirror_user::kernel::ifindex(name).ok();
    for s in &used.sources {
        let Some(idx) = ifindex(&s.interface) else {
            f.errors.push(format!(
                "source `{}`: interface {} does not exist in this network namespace",
                s.name, s.interface
            ));
            continue;
        };
        let xdp = s.mode == SourceMode::Tap || (s.ingress() && s.ingress_hook != IngressHook::Tc);
        if xdp {
            if let Some(other) = holders::xdp_holder(idx) {
                let msg = format!(
                    "source `{}`: {} already has {other}; mirror attaches its own XDP program there",
                    s.name, s.interface
                );
                if s.mode == SourceMode::Tap || s.ingress_hook == IngressHook::Xdp {
                    f.errors.push(msg);
                } else {
                    f.warnings.push(format!(
                        "{msg} (ingress_hook = \"auto\": fails unless the source's sessions clone at tcx)"
                    ));
                }
            }
        }
        if s.mode == SourceMode::Tap {
            for other in holders::xsk_holders(idx, None, false) {
                f.errors.push(format!(
                    "source `{}`: {} already has {other}; mirror binds an AF_XDP socket to every RX queue",
                    s.name, s.interface
                ));
            }
        }
    }
    for t in &used.targets {
        match &t.spec {
            TargetSpec::Interface { interface, .. } => match ifindex(interface) {
                None => f.errors.push(format!(
                    "target `{}`: interface {interface} does not exist in this network namespace",
                    t.name
                )),
                Some(idx) => {
                    for other in holders::xsk_holders(idx, Some(0), false) {
                        f.errors.push(format!(
                            "target `{}`: {interface} already has {other}; mirror sends through an AF_XDP socket on queue 0",
                            t.name
                        ));
                    }
                }
            },
            TargetSpec::Pcapng(spec) => {
                let writable = mirror_user::privileges::as_run_opens_files(|| {
                    mirror_user::target::pcapng::check_directory(&spec.path)
                });
                match writable {
                    Err(e) => f.errors.push(format!("target `{}`: {e}", t.name)),
                    Ok(()) => {
                        let held = mirror_user::target::pcapng::min_free_held_at_start(spec);
                        if let Some(why) = held {
                            f.warnings.push(format!("target `{}`: {why}", t.name));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"
[[source]]
name = "s"
interface = "lo"
mode = "copy"
direction = "both"
[[filter]]
name = "f"
[[filter.rule]]
number = 1
action = "accept"
direction = "ingress"
[[target]]
name = "p"
kind = "pcapng"
path = "@DIR@/x.pcapng"
[[target]]
name = "spare"
kind = "pcapng"
path = "/nonexistent-mirror-dir/y.pcapng"
[[session]]
name = "x"
source = "s"
filter = "f"
targets = ["p"]
"#;

    fn config(dir: &str) -> Config {
        mirror_user::config::parse(&CONFIG.replace("@DIR@", dir), "t.toml").expect("valid")
    }

    #[test]
    fn unused_targets_and_unmatched_directions_are_warned_about_not_checked() {
        let dir = std::env::temp_dir();
        let f = host(&config(&dir.to_string_lossy()));
        assert_eq!(f.errors, Vec::<String>::new());
        assert_eq!(f.warnings.len(), 2, "{:?}", f.warnings);
        assert_eq!(
            f.warnings[0],
            "target `spare` is used by no session: `mirror run` does not open it"
        );
        assert!(
            f.warnings[1].starts_with(
                "source `s` mirrors egress frames (direction = \"both\") but no filter of its sessions (`f`) has an egress rule"
            ),
            "{}",
            f.warnings[1]
        );
    }

    /// A target's `min_free` its file system is already under is named
    /// (a trial's `"50%"` on a disk 27% free wrote nothing, unwarned); a
    /// `path` that is a directory is an error.
    #[test]
    fn a_min_free_the_disk_is_under_is_warned_of_and_a_directory_path_refused() {
        let dir = std::env::temp_dir();
        let text = CONFIG.replace("@DIR@", &dir.to_string_lossy()).replace(
            "path = \"/nonexistent-mirror-dir/y.pcapng\"",
            "path = \"/nonexistent-mirror-dir/y.pcapng\"\nmin_free = \"99.9%\"",
        );
        let held = text.replace(
            "x.pcapng\"",
            "x.pcapng\"\nmin_free = \"9223372036854775807\"",
        );
        let f = host(&mirror_user::config::parse(&held, "t.toml").expect("valid"));
        assert_eq!(f.errors, Vec::<String>::new());
        assert!(
            f.warnings.iter().any(|w| w
                == &format!(
                    "target `p`: {} has less free space than min_free (9223372036854775807 \
                     bytes) already: nothing will be written (every copy counted disk_full) \
                     until space is freed",
                    dir.display()
                )),
            "{:?}",
            f.warnings
        );
        // The unused target is not opened, so not asked either.
        assert!(!f.warnings.iter().any(|w| w.starts_with("target `spare`: ")));
        let f = host(&mirror_user::config::parse(&text, "t.toml").expect("valid"));
        assert!(
            !f.warnings.iter().any(|w| w.contains("min_free")),
            "{:?}",
            f.warnings
        );
        let as_dir = text.replace(
            &format!("{}/x.pcapng", dir.display()),
            &dir.to_string_lossy(),
        );
        let f = host(&mirror_user::config::parse(&as_dir, "t.toml").expect("valid"));
        assert_eq!(f.errors.len(), 1, "{:?}", f.errors);
        assert!(f.errors[0].contains("is a directory"), "{:?}", f.errors);
    }

    /// A tap source sees ingress only: its filter's egress rules are
    /// named as never applying (a new-user trial read "4 rules" in check
    /// and `rules=2` in the daemon's log, with no word why).
    #[test]
    fn egress_rules_of_a_tap_sources_filter_are_warned_about() {
        let dir = std::env::temp_dir();
        let text = CONFIG
            .replace("@DIR@", &dir.to_string_lossy())
            .replace("mode = \"copy\"\ndirection = \"both\"\n", "")
            .replace(
                "[[target]]\nname = \"p\"",
                "[[filter.rule]]\nnumber = 2\naction = \"accept\"\ndirection = \"egress\"\n\
                 [[filter.rule]]\nnumber = 3\naction = \"reject\"\ndirection = \"egress\"\n\
                 [[target]]\nname = \"p\"",
            );
        let f = host(&mirror_user::config::parse(&text, "t.toml").expect("valid"));
        assert_eq!(
            f.warnings[1..],
            [
                "source `s` does not mirror egress frames (a tap source mirrors ingress only), \
              so the 2 egress rule(s) of filter `f` never apply to it"
            ]
        );
    }

    /// Root can write anywhere with CAP_DAC_OVERRIDE, which `mirror run`
    /// drops before opening files: check answers for run, not for root.
    #[test]
    #[ignore = "needs root: BPF and network namespaces"]
    fn a_directory_only_dac_override_could_write_is_an_error() {
        assert!(mirror_user::is_root(), "run as root");
        let dir = mirror_user::lab::TempDir::new("check-dac").expect("temp dir");
        let theirs = dir.path().join("theirs");
        std::fs::create_dir(&theirs).expect("mkdir");
        let c = std::ffi::CString::new(theirs.to_string_lossy().as_bytes()).expect("path");
        // Safety: `c` is a NUL-terminated path.
        assert_eq!(unsafe { libc::chown(c.as_ptr(), 65534, 65534) }, 0, "chown");
        let config = config(&theirs.to_string_lossy());
        let f = host(&config);
        assert_eq!(f.errors.len(), 1, "{:?}", f.errors);
        assert!(
            f.errors[0].starts_with("target `p`: ") && f.errors[0].contains("Permission denied"),
            "{:?}",
            f.errors
        );
        // And root's own directory is fine.
        let f = host(&config_in(dir.path()));
        assert_eq!(f.errors, Vec::<String>::new());
    }

    fn config_in(dir: &std::path::Path) -> Config {
        config(&dir.to_string_lossy())
    }

    #[test]
    fn a_missing_interface_and_a_missing_capture_directory_are_errors() {
        let text = CONFIG
            .replace("interface = \"lo\"", "interface = \"nosuch-mirror0\"")
            .replace("@DIR@", "/nonexistent-mirror-dir");
        let c = mirror_user::config::parse(&text, "t.toml").expect("valid");
        let f = host(&c);
        assert_eq!(
            f.errors,
            [
                "source `s`: interface nosuch-mirror0 does not exist in this network namespace",
                "target `p`: /nonexistent-mirror-dir: the directory does not exist; create it first"
            ]
        );
    }
}
