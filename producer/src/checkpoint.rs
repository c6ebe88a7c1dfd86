//! The producer's checkpoint: the Beijing time up to which every document was published and
//! confirmed.
//!
//! Invariant: written only after every message of the window it closes was confirmed, and
//! atomically (write a temporary file, fsync, rename, fsync the directory), so a crash leaves
//! either the old or the new checkpoint, never a torn one. A checkpoint that exists but cannot
//! be read stops the producer rather than silently starting over from `start_at`.

use std::path::{Path, PathBuf};

use chrono::{DateTime, FixedOffset};
use serde::{Deserialize, Serialize};

/// What the checkpoint file holds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Every document modified up to this instant was published.
    pub until: DateTime<FixedOffset>,
}

/// A checkpoint that cannot be read or written.
#[derive(Debug, thiserror::Error)]
#[error("checkpoint {path}: {problem}")]
pub struct CheckpointError {
    path: PathBuf,
    problem: String,
}

fn error(path: &Path, problem: impl ToString) -> CheckpointError {
    CheckpointError {
        path: path.to_path_buf(),
        problem: problem.to_string(),
    }
}

/// Reads the checkpoint; `None` when there is none yet (first run).
pub fn load(path: &Path) -> Result<Option<Checkpoint>, CheckpointError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            error(path, format!("cannot be read ({e}); fix or remove it (removing it restarts from producer.start_at)"))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(error(path, e)),
    }
}

/// Writes the checkpoint atomically.
pub fn save(path: &Path, checkpoint: &Checkpoint) -> Result<(), CheckpointError> {
    let body = serde_json::to_vec_pretty(checkpoint).map_err(|e| error(path, e))?;
    common::files::write_atomic(path, &body).map_err(|e| error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_refuses_a_corrupt_file() {
        let dir = std::env::temp_dir().join(format!("jst2kd-cp-{}", std::process::id()));
        let path = dir.join("producer.checkpoint.json");
        assert_eq!(load(&path).expect("absent is fine"), None);
        let cp = Checkpoint {
            until: common::time::parse_beijing("2026-03-01 10:00:00").expect("time"),
        };
        save(&path, &cp).expect("saved");
        assert_eq!(load(&path).expect("read"), Some(cp));
        std::fs::write(&path, b"{\"until\":").expect("write");
        assert!(load(&path).is_err());
        std::fs::remove_dir_all(&dir).ok();
    }
}
