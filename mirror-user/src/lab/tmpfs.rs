//! A small tmpfs, for tests that fill a disk.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A tmpfs mounted on a directory (created if missing), unmounted on drop.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (mount's `size=` option: "2m", "2g") on `at`.
    pub fn mount(at: PathBuf, size: &str) -> Result<Tmpfs> {
        std::fs::create_dir_all(&at).with_context(|| format!("creating {}", at.display()))?;
        let opts = format!("size={size}");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &opts, "mirror-lab"])
            .arg(&at)
            .status()
            .context("running mount")?
            .success();
        if !ok {
            bail!("mounting a tmpfs on {}", at.display());
        }
        Ok(Tmpfs(at))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Bytes free for files.
    pub fn free(&self) -> Result<u64> {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes())?;
        // Safety: statvfs is plain old data; all-zero is a valid value.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        // Safety: a NUL-terminated path and a valid out-pointer.
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            bail!(
                "statvfs {}: {}",
                self.0.display(),
                std::io::Error::last_os_error()
            );
        }
        Ok(st.f_bavail * st.f_frsize)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
