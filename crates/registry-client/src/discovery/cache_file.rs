//! The discovery cache file: every view written to disk when it changes and read back at
//! start, so that a process started while the registry is down still resolves (fail static
//! from the first call, not only after the registry has answered once).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use chrono::{DateTime, Utc};
use registry_api::Instance;
use serde::{Deserialize, Serialize};

/// The cache file: service name -> view, sorted so that the file diffs well.
pub(super) type CacheFile = BTreeMap<String, CachedView>;

/// One service's view as the file keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(super) struct CachedView {
    pub(super) index: u64,
    pub(super) instances: Vec<Instance>,
    /// When the view was received; optional so that a hand-written file still loads.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) fetched_at: Option<DateTime<Utc>>,
    /// The epoch of the registry's database that gave the view (absent from files written
    /// before epochs), so that a process started later can tell a registry that lost it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) epoch: Option<String>,
}

/// The views of the file at `path`; a missing or unreadable file is logged and yields
/// none (a cold start without a file is the normal first start).
pub(super) fn load(path: &Path) -> CacheFile {
    match read(path) {
        Ok(Some(file)) => {
            tracing::info!(
                path = %path.display(),
                services = file.len(),
                "loaded the discovery cache file"
            );
            file
        }
        Ok(None) => {
            tracing::info!(path = %path.display(), "no discovery cache file yet");
            CacheFile::new()
        }
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "ignoring the discovery cache file");
            CacheFile::new()
        }
    }
}

/// `Ok(None)` when the file does not exist.
pub(super) fn read(path: &Path) -> std::io::Result<Option<CacheFile>> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error),
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
}

/// Writes the file atomically: a temporary file in the same directory, flushed to disk,
/// then renamed over the old one, so a crash leaves the old file or the new one, never
/// half of one.
pub(super) fn write(path: &Path, file: &CacheFile) -> std::io::Result<()> {
    let json = serde_json::to_vec_pretty(file).map_err(std::io::Error::other)?;
    let mut temp_name = path.file_name().unwrap_or_default().to_os_string();
    temp_name.push(format!(".tmp-{}", std::process::id()));
    let temp = path.with_file_name(temp_name);
    let written = write_then_rename(&temp, path, &json);
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written?;
    // Make the rename itself durable; not every platform can open a directory.
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty())
        && let Ok(dir) = std::fs::File::open(dir)
    {
        let _ = dir.sync_all();
    }
    Ok(())
}

fn write_then_rename(temp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut out = std::fs::File::create(temp)?;
    out.write_all(bytes)?;
    out.sync_all()?;
    std::fs::rename(temp, path)
}

#[cfg(test)]
mod tests {
    use registry_api::Status;

    use super::*;
    use crate::discovery::tests::{TempDir, instance};

    #[test]
    fn what_is_written_reads_back_and_no_temporary_file_is_left() {
        let dir = TempDir::new();
        let path = dir.0.join("registry.json");
        let written = CacheFile::from([
            (
                "sum".to_owned(),
                CachedView {
                    index: 42,
                    instances: vec![
                        instance("sum-1", Status::Passing),
                        instance("sum-2", Status::Warning),
                    ],
                    fetched_at: Some(Utc::now()),
                    epoch: None,
                },
            ),
            (
                "concat".to_owned(),
                CachedView {
                    index: 7,
                    instances: Vec::new(),
                    fetched_at: None,
                    epoch: None,
                },
            ),
        ]);
        write(&path, &written).expect("write");
        assert_eq!(read(&path).expect("read"), Some(written.clone()));
        assert_eq!(load(&path), written);
        let leftovers: Vec<_> = std::fs::read_dir(&dir.0)
            .expect("list")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name())
            .collect();
        assert_eq!(leftovers, ["registry.json"], "no temporary file is left");
    }

    #[test]
    fn a_missing_or_corrupt_file_loads_as_empty() {
        let dir = TempDir::new();
        let missing = dir.0.join("absent.json");
        assert!(
            read(&missing)
                .expect("a missing file is no error")
                .is_none()
        );
        assert!(load(&missing).is_empty());
        for garbage in [
            &b"{\"sum\": {\"index\": 1, \"instances\": [tru"[..],
            b"\xff\xfe not json",
            b"[1, 2, 3]",
            b"{\"sum\": {\"index\": -1, \"instances\": []}}",
        ] {
            let path = dir.0.join("corrupt.json");
            std::fs::write(&path, garbage).expect("write");
            assert!(read(&path).is_err());
            assert!(load(&path).is_empty());
        }
    }
}
