//! Writes the daemon's health (`lanes::health`) to `<data_dir>/health.json` every beat: the
//! troubles the lanes and the heartbeat marked, and the disk's free space. The file is made at
//! its full size at start and only overwritten in place, so it is written on a full disk too.

use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::lanes::health::{self, Board, Health};
use crate::store::now_ms;

/// How often the file is written.
pub const EVERY: Duration = Duration::from_secs(2);

/// Keeps `<data_dir>/health.json` up to date until `stop`, then removes it (a stopped daemon has
/// no health to tell; `status` says it is not running).
pub async fn run(data_dir: PathBuf, board: Board, disk_low_bytes: u64, stop: CancellationToken) {
    let path = data_dir.join(health::FILE);
    let file = match make(&path) {
        Ok(file) => Some(file),
        Err(e) => {
            tracing::warn!(file = %path.display(), error = %e, "cannot keep a health file; status shows less");
            None
        }
    };
    let mut last_low = false;
    loop {
        let now = current(&board, &data_dir, disk_low_bytes);
        if now.disk_low != last_low {
            if now.disk_low {
                tracing::error!(
                    free_bytes = now.disk_free_bytes,
                    threshold_bytes = disk_low_bytes,
                    "health: the disk is nearly full"
                );
            } else {
                tracing::warn!(
                    free_bytes = now.disk_free_bytes,
                    "health: the disk has room again"
                );
            }
            last_low = now.disk_low;
        }
        if let Some(file) = &file
            && let Err(e) = file.write_all_at(&health::to_file_bytes(&now), 0)
        {
            tracing::debug!(error = %e, "health file not written");
        }
        tokio::select! {
            _ = tokio::time::sleep(EVERY) => {}
            _ = stop.cancelled() => break,
        }
    }
    let _ = std::fs::remove_file(&path);
}

/// The health now: the board's troubles and the data dir's free space against `disk_low_bytes`.
pub fn current(board: &Board, data_dir: &Path, disk_low_bytes: u64) -> Health {
    let free = disk_free_bytes(data_dir);
    Health {
        at: now_ms(),
        disk_free_bytes: free,
        disk_low_bytes,
        disk_low: free.is_some_and(|f| f < disk_low_bytes),
        troubles: board.troubles(),
    }
}

/// The file at its full size, private to this user.
fn make(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o640) // the umask makes it 0600, or 0640 with a readers group
        .open(path)?;
    file.write_all_at(&health::to_file_bytes(&Health::default()), 0)?;
    file.set_len(health::FILE_BYTES as u64)?;
    Ok(file)
}

/// Free bytes for this user on the file system of `path`.
#[allow(unsafe_code)] // one libc call; std has no way to ask a file system's free space
#[allow(clippy::useless_conversion)] // the field types differ between platforms
pub fn disk_free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: `c_path` is a valid NUL-terminated string and `stat` a valid, writable statvfs for
    // the call's duration; the call only writes into `stat`.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) };
    (rc == 0).then(|| u64::from(stat.f_bavail).saturating_mul(u64::from(stat.f_frsize)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_free_space_of_a_real_directory_is_known() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(disk_free_bytes(dir.path()).is_some_and(|f| f > 0));
        assert_eq!(disk_free_bytes(&dir.path().join("missing")), None);
    }
}
