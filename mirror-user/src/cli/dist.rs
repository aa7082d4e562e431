//! The files `cargo xtask dist` ships beside the binary: man pages and shell
//! completions generated from the clap definition ([`super::Cli`]), the
//! systemd unit and the example configs. [`assemble`] writes the whole
//! `dist/` tree; `mirror-user/examples/dist.rs` is the program xtask runs,
//! and the tests below call [`assemble`] directly, without a release build.
//!
//! ```text
//! dist/mirror                              the binary
//! dist/man/man1/mirror.1, mirror-run.1, …  one page per command (MANPATH=dist/man)
//! dist/completions/mirror.bash, _mirror, mirror.fish
//! dist/systemd/mirror.service
//! dist/examples/*.toml
//! ```

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::CommandFactory;
use clap_complete::Shell;

/// Where the man pages go, under the output directory.
pub const MAN_DIR: &str = "man/man1";
/// Where the shell completions go.
pub const COMPLETIONS_DIR: &str = "completions";
/// The shells completions are written for, and their files' names.
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "mirror.bash"),
    (Shell::Zsh, "_mirror"),
    (Shell::Fish, "mirror.fish"),
];

/// The command line as clap sees it, named `mirror` as the binary is.
pub fn command() -> clap::Command {
    super::Cli::command().name("mirror").bin_name("mirror")
}

/// Writes `mirror.1` and a page per subcommand (`mirror-run.1`,
/// `mirror-rules-add.1`, …) into `dir`; returns their paths, sorted.
///
/// `mirror.1` gets the long help's closing text (configuration, signals,
/// files, environment, exit status, examples) as sections of their own,
/// laid out as written, instead of clap_mangen's one filled EXTRA section.
pub fn man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = command().disable_help_subcommand(true);
    cmd.build();
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        sub_pages(sub, dir)?;
    }
    let top = clap_mangen::Man::new(cmd.clone().after_long_help(None::<&str>))
        .source(source())
        .manual("mirror manual");
    let mut page = Vec::new();
    top.render(&mut page)?;
    let page = String::from_utf8(page).context("roff is UTF-8")?;
    let at = page
        .find("\n.SH VERSION")
        .context("clap_mangen writes a VERSION section")?;
    let page = format!(
        "{}\n{}{}",
        &page[..at],
        after_help_roff(super::AFTER_HELP).trim_end(),
        &page[at..]
    );
    let path = dir.join("mirror.1");
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    files_in(dir)
}

/// The footer every page shows: the program and its version.
fn source() -> String {
    format!("mirror {}", env!("CARGO_PKG_VERSION"))
}

/// `cmd`'s page and its subcommands', as clap_mangen writes them.
fn sub_pages(cmd: &clap::Command, dir: &Path) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        sub_pages(sub, dir)?;
    }
    clap_mangen::Man::new(cmd.clone())
        .source(source())
        .manual("mirror manual")
        .generate_to(dir)
        .with_context(|| format!("writing {}'s man page", cmd.get_name()))?;
    Ok(())
}

/// The long help's closing text as roff: each unindented line a section
/// heading (`.SH`), the indented lines under it kept as they are laid out.
fn after_help_roff(text: &str) -> String {
    let mut roff = roff::Roff::new();
    let mut open = false;
    for line in text.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            if open {
                roff.control("fi", []);
            }
            roff.control("SH", [line.trim()]);
            roff.control("nf", []);
            open = true;
        } else {
            roff.text([roff::roman(line.strip_prefix("    ").unwrap_or(line))]);
        }
    }
    if open {
        roff.control("fi", []);
    }
    roff.to_roff()
}

/// Writes the bash, zsh and fish completions into `dir`; returns their paths.
pub fn completions(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = command();
    let mut out = Vec::new();
    for (shell, name) in SHELLS {
        let path = clap_complete::generate_to(shell, &mut cmd, "mirror", dir)
            .with_context(|| format!("writing {shell} completions to {}", dir.display()))?;
        if path.file_name().and_then(|n| n.to_str()) != Some(name) {
            bail!("{shell} completions went to {}, not {name}", path.display());
        }
        out.push(path);
    }
    Ok(out)
}

/// Writes the `dist/` tree into `out`, which must not exist or be empty:
/// `binary` as `mirror`, the man pages, the completions, and from `contrib`
/// the unit (`mirror.service`) and the example configs (`examples/*.toml`).
/// Returns every file written, relative to `out`, sorted.
pub fn assemble(out: &Path, binary: &Path, contrib: &Path) -> Result<Vec<PathBuf>> {
    if out.exists()
        && std::fs::read_dir(out)
            .with_context(|| format!("reading {}", out.display()))?
            .next()
            .is_some()
    {
        bail!("{} is not empty: remove it first", out.display());
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    copy(binary, &out.join("mirror"))?;
    man_pages(&out.join(MAN_DIR))?;
    completions(&out.join(COMPLETIONS_DIR))?;
    copy(
        &contrib.join("mirror.service"),
        &out.join("systemd/mirror.service"),
    )?;
    let examples = contrib.join("examples");
    for example in files_in(&examples)? {
        if example.extension().is_some_and(|e| e == "toml") {
            let name = example.file_name().context("a file name")?;
            copy(&example, &out.join("examples").join(name))?;
        }
    }
    let mut all = Vec::new();
    walk(out, &mut all)?;
    let mut rel: Vec<PathBuf> = all
        .into_iter()
        .map(|p| p.strip_prefix(out).map(Path::to_path_buf))
        .collect::<Result<_, _>>()?;
    rel.sort();
    Ok(rel)
}

/// Copies `from` to `to` (creating its directory), keeping the permissions.
fn copy(from: &Path, to: &Path) -> Result<()> {
    if let Some(dir) = to.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::copy(from, to)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    Ok(())
}

/// The files directly in `dir`, sorted.
fn files_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contrib() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../contrib")
    }

    /// A fresh, empty directory under the system's temp dir.
    fn temp(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("mirror-dist-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    /// Every subcommand path: `run`, `rules`, `rules list`, …
    fn subcommands(cmd: &clap::Command, prefix: &str, out: &mut Vec<String>) {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            if sub.get_name() == "help" {
                continue;
            }
            let name = format!("{prefix}{}", sub.get_name());
            out.push(name.clone());
            subcommands(sub, &format!("{name} "), out);
        }
    }

    fn all_subcommands() -> Vec<String> {
        let mut cmd = command();
        cmd.build();
        let mut out = Vec::new();
        subcommands(&cmd, "", &mut out);
        out
    }

    #[test]
    fn the_dist_tree_has_the_binary_pages_completions_unit_and_examples() {
        let out = temp("tree");
        let fake_binary = temp("bin");
        std::fs::write(&fake_binary, b"\x7fELF not really").expect("fake binary");
        let files = assemble(&out, &fake_binary, &contrib()).expect("assemble");

        let mut want: Vec<PathBuf> = vec![
            "mirror".into(),
            "systemd/mirror.service".into(),
            "completions/mirror.bash".into(),
            "completions/_mirror".into(),
            "completions/mirror.fish".into(),
            "man/man1/mirror.1".into(),
        ];
        for sub in all_subcommands() {
            want.push(format!("man/man1/mirror-{}.1", sub.replace(' ', "-")).into());
        }
        let mut examples = 0;
        for e in files_in(&contrib().join("examples")).expect("contrib/examples") {
            if e.extension().is_some_and(|x| x == "toml") {
                want.push(Path::new("examples").join(e.file_name().expect("name")));
                examples += 1;
            }
        }
        assert!(examples >= 3, "contrib/examples has the example configs");
        want.sort();
        assert_eq!(files, want);

        assert_eq!(
            std::fs::read(out.join("mirror")).expect("binary"),
            b"\x7fELF not really"
        );
        assert_eq!(
            std::fs::read(out.join("systemd/mirror.service")).expect("unit"),
            std::fs::read(contrib().join("mirror.service")).expect("unit")
        );
        // Not over a tree already there.
        let again = assemble(&out, &fake_binary, &contrib()).expect_err("not empty");
        assert!(again.to_string().contains("not empty"), "{again}");
        std::fs::remove_dir_all(&out).expect("clean up");
        std::fs::remove_file(&fake_binary).expect("clean up");
    }

    #[test]
    fn the_man_page_names_every_subcommand_and_the_after_help() {
        let dir = temp("man");
        let pages = man_pages(&dir).expect("man pages");
        let main = std::fs::read_to_string(dir.join("mirror.1")).expect("mirror.1");
        assert!(main.starts_with(".ie"), "roff");
        assert!(main.contains(".TH mirror 1"), "{main}");
        let subs = all_subcommands();
        assert!(subs.len() >= 8, "{subs:?}");
        for top in subs.iter().filter(|s| !s.contains(' ')) {
            // Listed in SUBCOMMANDS as mirror-NAME(1).
            assert!(
                main.contains(&format!("mirror\\-{}(1)", top.replace('-', "\\-"))),
                "mirror.1 names `{top}`:\n{main}"
            );
        }
        for sub in &subs {
            let file = format!("mirror-{}.1", sub.replace(' ', "-"));
            let page = std::fs::read_to_string(dir.join(&file)).expect(&file);
            let title = format!(".TH mirror-{} 1", sub.replace(' ', "-"));
            assert!(page.contains(&title), "{file}: {title}\n{page}");
            assert!(page.contains(&source()), "{file}: {}\n{page}", source());
        }
        // The long help's closing text, a section per heading, before VERSION.
        let mut last = 0;
        for section in [
            ".SH CONFIGURATION",
            ".SH SIGNALS",
            ".SH FILES",
            ".SH ENVIRONMENT",
            ".SH \"EXIT STATUS\"",
            ".SH EXAMPLES",
            ".SH VERSION",
        ] {
            let at = main
                .find(section)
                .unwrap_or_else(|| panic!("{section}:\n{main}"));
            assert!(at > last, "{section} in order");
            last = at;
        }
        assert!(!main.contains("EXTRA"), "no catch-all section");
        assert!(main.contains("/run/mirror/control.sock"));
        assert!(
            main.contains("mirror rules add \\-\\-filter ids"),
            "examples keep ASCII dashes (\\-)"
        );
        assert_eq!(pages.len(), subs.len() + 1);
        std::fs::remove_dir_all(&dir).expect("clean up");
    }

    #[test]
    fn the_completions_offer_every_subcommand() {
        let dir = temp("completions");
        let files = completions(&dir).expect("completions");
        assert_eq!(files.len(), 3);
        let subs = all_subcommands();
        for (_, name) in SHELLS {
            let text = std::fs::read_to_string(dir.join(name)).expect(name);
            for sub in &subs {
                let last = sub.rsplit(' ').next().expect("a name");
                assert!(text.contains(last), "{name} completes `{sub}`");
            }
            // And the options of `run`.
            assert!(text.contains("config"), "{name} completes --config");
        }
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
