//! Atomic file and directory writes.
//!
//! Every file ferrotune produces (checkpoints, caches, converted weights, configs) is written to a temporary
//! name in the destination directory and renamed into place, so a crash or Ctrl-C never leaves a
//! half-written file under its final name and never destroys the previous version.

use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

/// A filesystem operation that failed, with the path it was working on.
#[derive(Debug, thiserror::Error)]
#[error("{op} {}: {source}", path.display())]
pub struct FsError {
    pub op: &'static str,
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl FsError {
    pub fn new(op: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        FsError {
            op,
            path: path.into(),
            source,
        }
    }
}

/// A sibling path used while writing `path`: same directory (so the rename is atomic), hidden, unique per process.
pub fn temp_sibling(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename). Parent directories are created.
pub fn write_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<(), FsError> {
    write_atomic_with(path, |w| w.write_all(bytes))
}

/// Streams into `path` atomically: `fill` writes through a buffered writer to a temp file, which is renamed
/// over `path` only when `fill` succeeded and the data reached the disk.
pub fn write_atomic_with(
    path: impl AsRef<Path>,
    fill: impl FnOnce(&mut dyn Write) -> io::Result<()>,
) -> Result<(), FsError> {
    let path = path.as_ref();
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|e| FsError::new("creating directory", parent, e))?;
    }
    let tmp = temp_sibling(path);
    let result = (|| {
        let file = File::create(&tmp)?;
        let mut w = BufWriter::new(file);
        fill(&mut w)?;
        let file = w.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(FsError::new("writing", path, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        FsError::new("renaming into place", path, e)
    })
}

/// Makes a fully written temporary directory visible under `final_dir` in one rename. An existing
/// `final_dir` is moved aside first and deleted only after the new one is in place.
pub fn commit_dir(tmp_dir: &Path, final_dir: &Path) -> Result<(), FsError> {
    let old = final_dir.with_file_name(format!(
        ".{}.old-{}",
        final_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let had_old = final_dir.exists();
    if had_old {
        fs::rename(final_dir, &old).map_err(|e| FsError::new("moving aside", final_dir, e))?;
    }
    fs::rename(tmp_dir, final_dir)
        .map_err(|e| FsError::new("renaming into place", final_dir, e))?;
    if had_old {
        fs::remove_dir_all(&old).map_err(|e| FsError::new("removing", &old, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_whole_file_and_failed_write_keeps_old() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/out.json");
        write_atomic(&p, b"first").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"first");
        let err = write_atomic_with(&p, |w| {
            w.write_all(b"partial")?;
            Err(io::Error::other("disk on fire"))
        })
        .unwrap_err();
        assert!(err.to_string().contains("out.json") && err.to_string().contains("disk on fire"));
        assert_eq!(
            fs::read(&p).unwrap(),
            b"first",
            "old content must survive a failed write"
        );
        let leftovers: Vec<_> = fs::read_dir(p.parent().unwrap()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
    }

    #[test]
    fn commit_dir_swaps_directories() {
        let dir = tempfile::tempdir().unwrap();
        let fin = dir.path().join("checkpoint-10");
        for content in ["a", "b"] {
            let tmp = dir.path().join(".tmp-ckpt");
            fs::create_dir_all(&tmp).unwrap();
            fs::write(tmp.join("f"), content).unwrap();
            commit_dir(&tmp, &fin).unwrap();
            assert_eq!(fs::read_to_string(fin.join("f")).unwrap(), content);
        }
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
