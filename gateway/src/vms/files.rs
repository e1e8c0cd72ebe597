//! Which host files a VM's configuration may name ([`VmFiles`]), and
//! opening them. A `VmConfig` arrives from whoever holds the control token;
//! its `mem_image` is read and its `disk.path` is written by the guest (and
//! deleted once a migrated disk is released), so both must be regular files
//! under the directories the operator configured (`[vms] image_dirs` and
//! `[vms] disk_dirs`), reached without following any symlink.
//!
//! Each file is opened with `openat2(2)` relative to the configured
//! directory with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`: the kernel
//! refuses, in the same call that opens the file, a path that escapes the
//! directory or crosses a symlink in any component, so a file swapped for a
//! symlink after a check cannot slip through. `rustix` gives the call a safe
//! wrapper (this crate forbids unsafe code). `cap-std` was not chosen: its
//! directories follow symlinks that stay inside them, and the rule here is
//! "no symlinks at all", which openat2 states directly.
//!
//! A refused path gets one answer whatever the reason (missing, outside the
//! directories, a symlink, not a regular file), so the API does not reveal
//! which host paths exist; the reason is logged at the gateway.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use rustix::fs::{Mode, OFlags, ResolveFlags};
use wanmig_migration::machine::VmConfig;

use super::error::HostError;

/// Why a path was refused (for the gateway's log only: the API caller gets
/// [`HostError::FileRefused`], which does not say).
#[derive(Debug, thiserror::Error)]
pub enum FileRefusal {
    #[error("the path is not absolute")]
    NotAbsolute,
    #[error("the path has a '.' or '..' component")]
    Dotted,
    #[error("the path is not under any of {dirs:?}")]
    Outside { dirs: Vec<PathBuf> },
    #[error("cannot open the directory {}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot open it under {} without following symlinks: {source}", dir.display())]
    Open {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("it is not a regular file")]
    NotRegular,
}

/// The files a VM booted here may use: memory images under `image_dirs`,
/// disks under `disk_dirs`. The default allows none.
#[derive(Debug, Clone, Default)]
pub struct VmFiles {
    image_dirs: Vec<PathBuf>,
    disk_dirs: Vec<PathBuf>,
}

/// The files a configuration names, opened.
#[derive(Debug, Default)]
pub struct OpenedFiles {
    /// `mem_image`, read-only.
    pub mem_image: Option<File>,
    /// `disk.path`, read-write.
    pub disk: Option<File>,
}

impl VmFiles {
    pub fn new(image_dirs: Vec<PathBuf>, disk_dirs: Vec<PathBuf>) -> Self {
        VmFiles {
            image_dirs,
            disk_dirs,
        }
    }

    /// Opens the memory image and the disk `config` names for VM `name`,
    /// or refuses the first one that is not allowed.
    pub fn open(&self, name: &str, config: &VmConfig) -> Result<OpenedFiles, HostError> {
        let refused = |key: &'static str, setting: &'static str, path: &Path| {
            let (name, path) = (name.to_string(), path.to_path_buf());
            move |why: FileRefusal| {
                tracing::warn!(vm = %name, key, path = %path.display(), "refused: {why}");
                HostError::FileRefused {
                    name,
                    key,
                    path,
                    setting,
                }
            }
        };
        let mem_image = match &config.mem_image {
            Some(p) => Some(open_under(&self.image_dirs, p, false).map_err(refused(
                "mem_image",
                "image_dirs",
                p,
            ))?),
            None => None,
        };
        let disk = match &config.disk {
            Some(d) => Some(open_under(&self.disk_dirs, &d.path, true).map_err(refused(
                "disk.path",
                "disk_dirs",
                &d.path,
            ))?),
            None => None,
        };
        Ok(OpenedFiles { mem_image, disk })
    }
}

/// `path` relative to `dir` if it lies under it, with only plain
/// components (no `.`, `..` or root).
fn relative_under<'a>(path: &'a Path, dir: &Path) -> Option<Result<&'a Path, FileRefusal>> {
    let rel = path.strip_prefix(dir).ok()?;
    if rel.as_os_str().is_empty() {
        return None;
    }
    Some(
        if rel.components().all(|c| matches!(c, Component::Normal(_))) {
            Ok(rel)
        } else {
            Err(FileRefusal::Dotted)
        },
    )
}

/// Opens the regular file `path` under one of `dirs` (see the module
/// comment), read-write when `write`.
fn open_under(dirs: &[PathBuf], path: &Path, write: bool) -> Result<File, FileRefusal> {
    if !path.is_absolute() {
        return Err(FileRefusal::NotAbsolute);
    }
    // `Path::components` drops `.` in the middle of a path, so look at the
    // raw bytes for it as well.
    if path
        .as_os_str()
        .as_encoded_bytes()
        .split(|b| *b == b'/')
        .any(|c| c == b"." || c == b"..")
    {
        return Err(FileRefusal::Dotted);
    }
    let mut last = None;
    for dir in dirs {
        // The directory as configured and as the kernel resolves it (the
        // operator's own symlinks in it are trusted).
        let canonical = std::fs::canonicalize(dir).ok();
        let rel = std::iter::once(dir.as_path())
            .chain(canonical.as_deref())
            .find_map(|d| relative_under(path, d));
        let rel = match rel {
            Some(Ok(rel)) => rel,
            Some(Err(e)) => return Err(e),
            None => continue,
        };
        let base = canonical.as_deref().unwrap_or(dir);
        match open_beneath(base, rel, write) {
            Ok(f) => return Ok(f),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| FileRefusal::Outside {
        dirs: dirs.to_vec(),
    }))
}

fn open_beneath(dir: &Path, rel: &Path, write: bool) -> Result<File, FileRefusal> {
    let dirfd = rustix::fs::open(
        dir,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| FileRefusal::Dir {
        dir: dir.to_path_buf(),
        source: e.into(),
    })?;
    let access = if write { OFlags::RDWR } else { OFlags::RDONLY };
    // NONBLOCK: opening a FIFO must not hang the request (it is refused
    // below as not a regular file); it changes nothing for regular files.
    let fd = rustix::fs::openat2(
        &dirfd,
        rel,
        access | OFlags::CLOEXEC | OFlags::NOFOLLOW | OFlags::NOCTTY | OFlags::NONBLOCK,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
    )
    .map_err(|e| FileRefusal::Open {
        dir: dir.to_path_buf(),
        source: e.into(),
    })?;
    let file = File::from(fd);
    match file.metadata() {
        Ok(m) if m.file_type().is_file() => Ok(file),
        _ => Err(FileRefusal::NotRegular),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn only_regular_files_under_the_dirs_without_symlinks_open() {
        let root = tempfile::tempdir().unwrap();
        let allowed = root.path().join("images");
        let outside = root.path().join("secret");
        std::fs::create_dir_all(allowed.join("sub")).unwrap();
        std::fs::write(&outside, b"secret").unwrap();
        std::fs::write(allowed.join("ok.img"), b"image").unwrap();
        std::fs::write(allowed.join("sub/ok.img"), b"image").unwrap();
        symlink(&outside, allowed.join("link.img")).unwrap();
        symlink(allowed.join("sub"), allowed.join("linkdir")).unwrap();
        std::fs::create_dir(allowed.join("adir")).unwrap();
        let dirs = vec![allowed.clone()];
        assert!(open_under(&dirs, &allowed.join("ok.img"), false).is_ok());
        assert!(open_under(&dirs, &allowed.join("sub/ok.img"), true).is_ok());
        for bad in [
            outside.clone(),
            allowed.join("link.img"),
            allowed.join("linkdir/ok.img"),
            allowed.join("adir"),
            allowed.join("../secret"),
            allowed.join("sub/../ok.img"),
            allowed.join("./ok.img"),
            allowed.join("missing.img"),
            allowed.clone(),
            PathBuf::from("images/ok.img"),
            PathBuf::from("/dev/zero"),
        ] {
            assert!(
                open_under(&dirs, &bad, false).is_err(),
                "{} opened",
                bad.display()
            );
        }
        assert!(open_under(&[PathBuf::from("/dev")], Path::new("/dev/zero"), false).is_err());
    }
}
