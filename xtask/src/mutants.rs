//! `cargo xtask mutants`: mutation testing, kept as a habit.
//!
//! Rust: `cargo-mutants` over the userspace crate, one group of modules at a
//! time, each with the tests that run in seconds and cover it (unit tests,
//! the table half of the differential test). Results per group go to
//! `mutants.out/GROUP/` and a summary table to `benches/results/mutants.md`
//! (copied into the README between markers when every group ran).
//!
//! C: hand-made mutations of the kernel programs (a wrong counter, an
//! off-by-one bound, a wrong direction, an asymmetric hash), each applied in
//! place, built, and run against the kernel-table tests, which must fail.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A group of modules and the tests that judge their mutants.
struct Group {
    name: &'static str,
    /// `cargo mutants --file` globs, from the workspace root.
    files: &'static [&'static str],
    /// Test target selection for both `cargo build` and `cargo test`.
    test_args: &'static [&'static str],
}

const GROUPS: &[Group] = &[
    Group {
        name: "config",
        files: &["mirror-user/src/config/**/*.rs"],
        test_args: &["--lib"],
    },
    // The differential test's property half takes ~7 s a run (96 cases):
    // with it a filter mutant cost ~15 s; the parser and the tables have
    // unit tests of their own in `--lib`.
    Group {
        name: "filter",
        files: &["mirror-user/src/filter/**/*.rs"],
        test_args: &["--lib"],
    },
    // The target kinds' encoders and policies (what the issue names: encap,
    // pcapng, tunnel, group, and the kernel tunnels' headers). The queue
    // (`target/mod.rs`) and the AF_XDP sender (`interface.rs`) are judged by
    // the end-to-end tests, which take minutes per mutant.
    Group {
        name: "target",
        files: &[
            "mirror-user/src/target/encap.rs",
            "mirror-user/src/target/pcapng.rs",
            "mirror-user/src/target/tunnel.rs",
            "mirror-user/src/target/group.rs",
            "mirror-user/src/target/kernel_tunnel.rs",
        ],
        test_args: &["--lib"],
    },
    Group {
        name: "session",
        files: &["mirror-user/src/dataplane/session.rs"],
        test_args: &["--lib"],
    },
];

/// One hand-made mutation of the kernel programs.
struct CMutant {
    what: &'static str,
    file: &'static str,
    from: &'static str,
    to: &'static str,
}

const C_MUTANTS: &[CMutant] = &[
    CMutant {
        what: "wrong counter: filtered frames counted as matched",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "\t\tcount(dir, MIRROR_CNT_FILTERED);\n\t\treturn -1;",
        to: "\t\tcount(dir, MIRROR_CNT_MATCHED);\n\t\treturn -1;",
    },
    CMutant {
        what: "off-by-one: one VLAN tag more accepted than the bound",
        file: "mirror-ebpf/src/bpf/parse.h",
        from: "for (i = 0; i < MIRROR_MAX_VLAN_DEPTH; i++) {",
        to: "for (i = 0; i <= MIRROR_MAX_VLAN_DEPTH; i++) {",
    },
    CMutant {
        what: "off-by-one: one IPv6 extension header fewer than the bound",
        file: "mirror-ebpf/src/bpf/parse.h",
        from: "for (i = 0; i < MIRROR_MAX_IPV6_EXT + 1; i++) {",
        to: "for (i = 0; i < MIRROR_MAX_IPV6_EXT; i++) {",
    },
    CMutant {
        what: "wrong direction: tcx egress copies marked ingress",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "return tc_copy(skb, MIRROR_DIR_EGRESS);",
        to: "return tc_copy(skb, MIRROR_DIR_INGRESS);",
    },
    CMutant {
        what: "asymmetric flow hash: the reverse direction hashes elsewhere",
        file: "mirror-ebpf/src/bpf/flowhash.h",
        from: "both = endpoint_hash(p->src, sport) + endpoint_hash(p->dst, dport);",
        to: "both = endpoint_hash(p->src, sport) + 2 * endpoint_hash(p->dst, dport);",
    },
    CMutant {
        what: "sampling off by one: 1 in N becomes 0 in N",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "% n != 0;",
        to: "% n != n;",
    },
    CMutant {
        what: "off-by-one: packet_length copies one byte more",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "\t\tcap = snap;\n",
        to: "\t\tcap = snap + 1;\n",
    },
    CMutant {
        what: "off-by-one: copy mode's kernel path refuses a frame its target takes exactly",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "if (!gso && len > t->max_len) {",
        to: "if (!gso && len >= t->max_len) {",
    },
    CMutant {
        what: "wrong counter: a down kernel-path target's frames counted sent",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "\t\t\tst->down += 1;\n\t\t\tcontinue;",
        to: "\t\t\tst->packets += 1;\n\t\t\tcontinue;",
    },
    CMutant {
        what: "wrong counter: a disabled session's frames counted sampled_out",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "\t\tcount(dir, MIRROR_CNT_SCHEDULED_OUT);",
        to: "\t\tcount(dir, MIRROR_CNT_SAMPLED_OUT);",
    },
    CMutant {
        what: "stale policy: frames read the slot the daemon just left",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "__u32 i = *(volatile __u32 *)&policy_slot[s] & (MIRROR_POLICY_SLOTS - 1);",
        to: "__u32 i = (*(volatile __u32 *)&policy_slot[s] ^ 1) & (MIRROR_POLICY_SLOTS - 1);",
    },
    CMutant {
        what: "the relay cuts by policy slot 0 whatever slot the frame was classified under",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "MIRROR_POLICY_SLOTS + (mark >> MIRROR_RELAY_PSLOT_SHIFT & 1)].packet_length;",
        to: "MIRROR_POLICY_SLOTS + 0].packet_length;",
    },
    CMutant {
        what: "xdp_tunnel takes every copy for its session's tunnel 0, whatever its device",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "if (d[k].ifindex == ifindex)",
        to: "if (d[k].ifindex != 0)",
    },
    CMutant {
        what: "off-by-one: xdp_tunnel never finds a session's last destination",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "\t\tif (k >= n)\n\t\t\tbreak;",
        to: "\t\tif (k + 1 >= n)\n\t\t\tbreak;",
    },
    CMutant {
        what: "pick_member reads member i's up bit at i % 8: members 8-31 seem up when down",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "p->up & (1u << (i & 31))",
        to: "p->up & (1u << (i & 7))",
    },
    CMutant {
        what: "off-by-one: every member down takes the last member's variant, not the non-members'",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "if (all_down)\n\t\t\tvariant = f->group_n;",
        to: "if (all_down)\n\t\t\tvariant = f->group_n - 1;",
    },
    CMutant {
        what: "off-by-one: count_down never counts the last key (31)",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "for (__u32 i = 0; i < MIRROR_MAX_FAST_TARGETS; i++)\n\t\tif (down & (1u << i))",
        to: "for (__u32 i = 0; i < MIRROR_MAX_FAST_TARGETS - 1; i++)\n\t\tif (down & (1u << i))",
    },
    CMutant {
        what: "off-by-one: count_too_big never checks a session's last destination",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "if (i >= n)\n\t\t\tbreak;\n\t\tif (!(keys & (1u << i)))",
        to: "if (i + 1 >= n)\n\t\t\tbreak;\n\t\tif (!(keys & (1u << i)))",
    },
    CMutant {
        what: "the source marks relay clones with the old 3-bit destination field",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "s << MIRROR_RELAY_SESSION_SHIFT | i;",
        to: "s << 3 | i;",
    },
    CMutant {
        what: "the relay reads the destination with the old 8-target mask",
        file: "mirror-ebpf/src/bpf/mirror.bpf.c",
        from: "slot = session * MIRROR_MAX_FAST_TARGETS + (mark & (MIRROR_MAX_FAST_TARGETS - 1));",
        to: "slot = session * MIRROR_MAX_FAST_TARGETS + (mark & 7);",
    },
];

/// The kernel-table tests the C mutants run against.
const C_TESTS: &[&str] = &["--test", "kernel_verdicts", "--test", "kernel_copy"];

/// Outcome counts of one group, from cargo-mutants' `outcomes.json`.
#[derive(Debug, Default, Clone, Copy)]
struct Score {
    caught: u64,
    missed: u64,
    timeout: u64,
    unviable: u64,
}

impl Score {
    /// Caught of the viable mutants, in percent.
    fn percent(&self) -> f64 {
        let viable = self.caught + self.missed + self.timeout;
        if viable == 0 {
            return 100.0;
        }
        100.0 * self.caught as f64 / viable as f64
    }
}

pub fn main(
    root: &Path,
    names: &[String],
    c_only: bool,
    rust_only: bool,
    jobs: u32,
    shard: Option<&str>,
) -> Result<()> {
    for n in names {
        if !GROUPS.iter().any(|g| g.name == n) {
            bail!(
                "no mutant group `{n}`; groups: {}",
                GROUPS.iter().map(|g| g.name).collect::<Vec<_>>().join(", ")
            );
        }
    }
    let mut lines = Vec::new();
    if !c_only {
        ensure_cargo_mutants()?;
        let groups: Vec<&Group> = GROUPS
            .iter()
            .filter(|g| names.is_empty() || names.iter().any(|n| n == g.name))
            .collect();
        lines.push(
            "| group | files | caught | missed | timeout | unviable | caught of viable |".into(),
        );
        lines.push("|---|---|---:|---:|---:|---:|---:|".into());
        for g in &groups {
            let s = rust_group(root, g, jobs, shard)?;
            println!(
                "mutants {}: {} caught, {} missed, {} timeout, {} unviable ({:.1}%)",
                g.name,
                s.caught,
                s.missed,
                s.timeout,
                s.unviable,
                s.percent()
            );
            lines.push(format!(
                "| {} | `{}` | {} | {} | {} | {} | {:.1}% |",
                g.name,
                g.files.join("`, `"),
                s.caught,
                s.missed,
                s.timeout,
                s.unviable,
                s.percent()
            ));
        }
    }
    if !rust_only && names.is_empty() {
        if !crate::is_root() {
            bail!("the C mutants run the kernel-table tests, which load BPF: run as root");
        }
        lines.push(String::new());
        lines.push("| C mutation (kernel-table tests must fail) | caught |".into());
        lines.push("|---|---|".into());
        let mut missed = 0;
        for m in C_MUTANTS {
            let caught = c_mutant(root, m)?;
            println!(
                "C mutant `{}`: {}",
                m.what,
                if caught { "caught" } else { "MISSED" }
            );
            missed += u32::from(!caught);
            lines.push(format!(
                "| {} (`{}`) | {} |",
                m.what,
                m.file.rsplit('/').next().unwrap_or(m.file),
                if caught { "yes" } else { "**no**" }
            ));
        }
        if missed > 0 {
            eprintln!("xtask: {missed} C mutant(s) missed by the kernel-table tests");
        }
    }
    let table = lines.join("\n") + "\n";
    let out = root.join("benches/results/mutants.md");
    std::fs::write(&out, &table).with_context(|| format!("writing {}", out.display()))?;
    println!("{table}");
    if names.is_empty() && !c_only && !rust_only && shard.is_none() {
        crate::replace_between_markers(&root.join("README.md"), "mutants", &table)?;
    }
    Ok(())
}

fn ensure_cargo_mutants() -> Result<()> {
    let found = Command::new("cargo")
        .args(["mutants", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-mutants (once)");
    crate::run(Command::new("cargo").args(["install", "--locked", "cargo-mutants"]))
}

/// Runs cargo-mutants over one group; returns its outcome counts.
fn rust_group(root: &Path, g: &Group, jobs: u32, shard: Option<&str>) -> Result<Score> {
    let out_dir = match shard {
        Some(k) => {
            root.join("mutants.out")
                .join(format!("{}-shard-{}", g.name, k.replace('/', "-of-")))
        }
        None => root.join("mutants.out").join(g.name),
    };
    std::fs::create_dir_all(&out_dir)?;
    let mut cmd = Command::new("cargo");
    cmd.current_dir(root).args([
        "mutants",
        "--package",
        "mirror-user",
        "--no-shuffle",
        "--jobs",
        &jobs.to_string(),
        "--output",
    ]);
    cmd.arg(&out_dir);
    if let Some(k) = shard {
        cmd.args(["--shard", k]);
    }
    for f in g.files {
        cmd.args(["--file", f]);
    }
    // As cargo args (not after `--`) so that the build phase, too, builds only
    // the selected test targets: without it every mutant also relinks each
    // end-to-end test binary, which doubled the time per mutant.
    for a in g.test_args {
        cmd.arg(format!("--cargo-arg={a}"));
    }
    // Unit tests that need root (the tunnel sender's raw sockets on
    // loopback) are `#[ignore]`d like the end-to-end ones: as root they judge
    // mutants too.
    if crate::is_root() {
        cmd.args(["--", "--", "--include-ignored"]);
    }
    eprintln!("xtask: {cmd:?}");
    // Exit 2 means mutants were missed, 3 timeouts: the counts say so.
    let status = cmd.status().context("running cargo mutants")?;
    if !matches!(status.code(), Some(0 | 2 | 3)) {
        bail!("cargo mutants failed for {}: {status}", g.name);
    }
    read_outcomes(&out_dir.join("mutants.out/outcomes.json"))
}

fn read_outcomes(path: &Path) -> Result<Score> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
    Ok(Score {
        caught: n("caught"),
        missed: n("missed"),
        timeout: n("timeout"),
        unviable: n("unviable"),
    })
}

/// Puts a file back as it was, also when the run fails or panics.
struct Restore {
    path: PathBuf,
    text: String,
}

impl Drop for Restore {
    fn drop(&mut self) {
        if let Err(e) = std::fs::write(&self.path, &self.text) {
            eprintln!(
                "xtask: RESTORE FAILED for {}: {e}; run `git checkout -- {}`",
                self.path.display(),
                self.path.display()
            );
        }
    }
}

/// Applies one C mutation, runs the kernel-table tests; true when they fail.
fn c_mutant(root: &Path, m: &CMutant) -> Result<bool> {
    let path = root.join(m.file);
    let clean = Command::new("git")
        .current_dir(root)
        .args(["diff", "--quiet", "--", m.file])
        .status()?
        .success();
    if !clean {
        bail!(
            "{} has uncommitted changes: commit or stash them first (mutants edit it in place)",
            m.file
        );
    }
    let text = std::fs::read_to_string(&path)?;
    if text.matches(m.from).count() != 1 {
        bail!(
            "C mutant `{}`: `{}` is not in {} exactly once: update the mutant",
            m.what,
            m.from,
            m.file
        );
    }
    let _restore = Restore {
        path: path.clone(),
        text: text.clone(),
    };
    std::fs::write(&path, text.replacen(m.from, m.to, 1))?;
    let built = Command::new("cargo")
        .current_dir(root)
        .args(["test", "-p", "mirror-user", "--no-run"])
        .args(C_TESTS)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("building the kernel-table tests")?;
    if !built.success() {
        bail!(
            "C mutant `{}` does not build: a mutant must compile to count; fix the mutant",
            m.what
        );
    }
    let status = Command::new("cargo")
        .current_dir(root)
        .args(["test", "-p", "mirror-user"])
        .args(C_TESTS)
        .args(["--", "--include-ignored"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .context("running the kernel-table tests")?;
    Ok(!status.success())
}
