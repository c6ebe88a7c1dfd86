//! Durable small files: the producer's checkpoint and token pair.
//!
//! Invariant: a reader sees the old content or the new one, never a torn file: write a
//! temporary file beside the target, fsync it, rename it over the target, fsync the directory.

use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically and durably.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    // A name of its own, so two writers never rename each other's half-written file.
    let tmp = dir.join(format!(
        ".{name}.{}.{:08x}.tmp",
        std::process::id(),
        rand::random::<u32>()
    ));
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        // Tokens are secrets: readable by the owner only.
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        // Makes the rename itself durable; not every filesystem supports syncing a directory,
        // and the rename is atomic either way, so a failure here is not fatal.
        let _ = d.sync_all();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_content_whole() {
        let dir = std::env::temp_dir().join(format!("jst2kd-files-{}", std::process::id()));
        let path = dir.join("sub").join("state.json");
        write_atomic(&path, b"one").expect("first");
        write_atomic(&path, b"two").expect("second");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(
            std::fs::read_dir(path.parent().expect("dir"))
                .expect("list")
                .count(),
            1,
            "no temp file left"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
