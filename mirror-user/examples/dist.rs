//! `dist OUT BINARY CONTRIB`: writes the `dist/` tree (see
//! `mirror_user::cli::dist`). `cargo xtask dist` builds and runs it; it is an
//! example, not a subcommand of `mirror`, so that the shipped binary carries
//! none of it.

use std::path::PathBuf;

fn main() -> anyhow::Result<()> {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    let [out, binary, contrib] = args.as_slice() else {
        anyhow::bail!("usage: dist OUT BINARY CONTRIB");
    };
    for file in mirror_user::cli::dist::assemble(out, binary, contrib)? {
        println!("{}", out.join(file).display());
    }
    Ok(())
}
