//! The single policy for nightshift's files and folders, for every layer:
//!
//! - what it keeps is its owner's alone ([`make_private`]: 0600 files, 0700 folders), or also a
//!   configured readers group's ([`share_with`]: 0640 files, 2750 folders);
//! - it works only in folders no one else can change under it ([`check_folder`], like OpenSSH's
//!   StrictModes: the folder and every parent up to `/` owned by root or nightshift's user, and
//!   writable by no one else, unless a parent has the sticky bit, as `/tmp` has);
//! - it never follows a symlink inside its folders: job files are opened with `O_NOFOLLOW`
//!   ([`open_regular`]), and moved with `renameat2` relative to folders opened with `O_NOFOLLOW`
//!   ([`move_into`]), never overwriting.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags, RenameFlags};

/// The group that may read what the daemon keeps (`[daemon] readers_group`), once set.
static READERS: std::sync::OnceLock<u32> = std::sync::OnceLock::new();

/// From now on what this process keeps is readable by group `gid` too: files 0640, folders 2750
/// (the setgid bit hands the group to what is made in them), in that group. Set once, by the
/// daemon, before it makes anything; the umask then is 027.
pub fn share_with(gid: u32) {
    let _ = READERS.set(gid);
    rustix::process::umask(Mode::from_raw_mode(0o027));
}

/// The modes of a kept file and folder, and the group they are shared with, if any.
fn kept_modes() -> (u32, u32, Option<u32>) {
    match READERS.get() {
        Some(&gid) => (0o640, 0o2750, Some(gid)),
        None => (0o600, 0o700, None),
    }
}

/// The gid of a group given by name (looked up in /etc/group) or number.
pub fn group_id(group: &str) -> std::io::Result<u32> {
    if let Ok(gid) = group.parse() {
        return Ok(gid);
    }
    let groups = std::fs::read_to_string("/etc/group")?;
    groups
        .lines()
        .find_map(|line| {
            let mut fields = line.split(':');
            if fields.next() != Some(group) {
                return None;
            }
            fields.nth(1).and_then(|gid| gid.parse().ok())
        })
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("there is no group {group:?} in /etc/group (give its number instead)"),
            )
        })
}

/// Whether this process owns what `uid` owns (root owns everything).
fn is_mine(uid: u32) -> bool {
    let me = rustix::process::geteuid();
    me.is_root() || me.as_raw() == uid
}

/// Makes a file nightshift keeps (the database, results, copies of job files, backups) readable
/// by its owner only: 0600 for a file, 0700 for a folder, whatever the umask or the mode of the
/// file it was copied from; or, with a readers group ([`share_with`]), 0640 and 2750 in that
/// group. A symlink is left alone (never followed). `recurse`: the folder's contents too.
pub fn make_private(path: &Path, recurse: bool) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(path)?;
    if meta.file_type().is_symlink() {
        return Ok(());
    }
    let (file_mode, dir_mode, group) = kept_modes();
    let mode = if meta.is_dir() { dir_mode } else { file_mode };
    // Another user's file (a job file a submitter owns) cannot be changed, and needs not be: it
    // is kept in a folder only nightshift (and its readers) can enter.
    if is_mine(meta.uid()) {
        let named =
            |e: std::io::Error| std::io::Error::new(e.kind(), format!("{}: {e}", path.display()));
        if let Some(gid) = group.filter(|&g| g != meta.gid()) {
            std::os::unix::fs::lchown(path, None, Some(gid)).map_err(named)?;
        }
        if meta.permissions().mode() & 0o7777 != mode {
            std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(named)?;
        }
    }
    if recurse && meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            let child = entry?.path();
            match make_private(&child, true) {
                // Gone meanwhile (a submit's hidden file renamed in, say): nothing to keep.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                other => other?,
            }
        }
    }
    Ok(())
}

/// Why a folder is not safe to work in; each says what to run.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Untrusted {
    #[error("{what} {path} cannot be checked: {error}")]
    Unreadable {
        what: String,
        path: PathBuf,
        error: String,
    },
    #[error(
        "{what} {path} is writable by every user on this host, who could then submit, spend and read; fix: chmod o-w {path}"
    )]
    WorldWritable { what: String, path: PathBuf },
    #[error(
        "{what} {path} is writable by group {gid}, which nightshift does not run in; fix: chmod g-w {path} (or chgrp it to nightshift's group)"
    )]
    GroupWritable {
        what: String,
        path: PathBuf,
        gid: u32,
    },
    #[error(
        "{what} {path} belongs to user {uid}, who could change its modes; fix: chown {owner} {path}"
    )]
    ForeignOwner {
        what: String,
        path: PathBuf,
        uid: u32,
        owner: u32,
    },
    #[error(
        "{path} is not a folder (a symlink or a file); nightshift never follows links in its folders: remove it, nightshift makes the folder"
    )]
    NotAFolder { path: PathBuf },
    #[error(
        "{path} (owner uid {uid}, mode {mode:o}) is not nightshift's own folder, or others may write it; nightshift moves files only into its own: remove it (nightshift makes it again)"
    )]
    NotOwn { path: PathBuf, uid: u32, mode: u32 },
}

/// Who nightshift runs as: the user and the groups that may share its folders.
#[derive(Debug, Clone)]
pub struct Identity {
    pub uid: u32,
    pub gids: Vec<u32>,
}

impl Identity {
    /// This process's effective user and groups.
    pub fn current() -> Identity {
        let mut gids: Vec<u32> = rustix::process::getgroups()
            .unwrap_or_default()
            .into_iter()
            .map(|g| g.as_raw())
            .collect();
        gids.push(rustix::process::getegid().as_raw());
        Identity {
            uid: rustix::process::geteuid().as_raw(),
            gids,
        }
    }
}

/// The facts of one path that decide whether it can be trusted.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Decides for one folder on the way to (and including) the one nightshift works in. Pure.
/// `last`: the folder itself (a sticky bit does not make it safe: others could add job files).
pub fn judge(
    path: &Path,
    what: &str,
    facts: Facts,
    me: &Identity,
    last: bool,
) -> Result<(), Untrusted> {
    let (what, path) = (what.to_owned(), path.to_owned());
    if facts.uid != 0 && facts.uid != me.uid {
        return Err(Untrusted::ForeignOwner {
            what,
            path,
            uid: facts.uid,
            owner: me.uid,
        });
    }
    let sticky = facts.mode & 0o1000 != 0 && !last;
    if facts.mode & 0o002 != 0 && !sticky {
        return Err(Untrusted::WorldWritable { what, path });
    }
    if facts.mode & 0o020 != 0 && !sticky && !me.gids.contains(&facts.gid) {
        return Err(Untrusted::GroupWritable {
            what,
            path,
            gid: facts.gid,
        });
    }
    Ok(())
}

/// Checks that `dir` (a folder nightshift works in, named `what` in messages, e.g. "jobs_dir")
/// and every folder above it are safe from other users ([`judge`]). A symlink in the configured
/// path itself is the operator's choice: the folder it leads to is checked. Returns that folder.
pub fn check_folder(dir: &Path, what: &str) -> Result<PathBuf, Untrusted> {
    let unreadable = |path: &Path, e: std::io::Error| Untrusted::Unreadable {
        what: what.to_owned(),
        path: path.to_owned(),
        error: e.to_string(),
    };
    let real = std::fs::canonicalize(dir).map_err(|e| unreadable(dir, e))?;
    let me = Identity::current();
    let mut last = true;
    for path in real.ancestors() {
        let meta = std::fs::metadata(path).map_err(|e| unreadable(path, e))?;
        if last && !meta.is_dir() {
            return Err(Untrusted::NotAFolder { path: real });
        }
        let facts = Facts {
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
        };
        let label = if last {
            what.to_owned()
        } else {
            format!("{what}'s parent folder")
        };
        judge(path, &label, facts, &me, last)?;
        last = false;
    }
    Ok(real)
}

/// Opens a file for reading, refusing a symlink (`O_NOFOLLOW`) and anything but a regular file
/// (a FIFO is not waited on: `O_NONBLOCK`).
pub fn open_regular(path: &Path) -> std::io::Result<File> {
    let fd = rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| with_symlink_words(e.into(), path))?;
    let file = File::from(fd);
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    Ok(file)
}

/// `ELOOP` from `O_NOFOLLOW` says "too many levels of symbolic links"; say what it means here.
fn with_symlink_words(e: std::io::Error, path: &Path) -> std::io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        return std::io::Error::other(format!(
            "{} is a symlink; nightshift never follows links in its folders: put the file itself there",
            path.display()
        ));
    }
    e
}

/// Checks a folder nightshift keeps files in (`ingested/`, `rejected/`, `results/`…), if it exists:
/// a real folder (not a link), nightshift's own (or root's), that no group or other user may
/// write. In a jobs folder submitters may write, one could otherwise rename nightshift's
/// `ingested/` away and put a folder of their own in its place.
pub fn check_own_folder(path: &Path) -> Result<(), Untrusted> {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return Ok(()); // not there yet: nightshift makes it
    };
    if !meta.is_dir() {
        return Err(Untrusted::NotAFolder {
            path: path.to_owned(),
        });
    }
    own_folder(path, meta.uid(), meta.mode())
}

/// A folder of owner `uid` and `mode` is nightshift's own: its (or root's), and no group or
/// other user may write it.
fn own_folder(path: &Path, uid: u32, mode: u32) -> Result<(), Untrusted> {
    if !is_mine(uid) || mode & 0o022 != 0 {
        return Err(Untrusted::NotOwn {
            path: path.to_owned(),
            uid,
            mode: mode & 0o7777,
        });
    }
    Ok(())
}

/// Opens `dir/name` as a folder, creating it (0700) if missing, refusing a symlink.
fn open_subfolder(dir: &OwnedFd, dir_path: &Path, name: &str) -> std::io::Result<OwnedFd> {
    match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o700)) {
        Ok(()) => make_private(&dir_path.join(name), false)?,
        Err(rustix::io::Errno::EXIST) => {}
        Err(e) => return Err(e.into()),
    }
    let path = dir_path.join(name);
    let folder = rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            std::io::Error::other(Untrusted::NotAFolder { path: path.clone() }.to_string())
        }
        e => e.into(),
    })?;
    // The folder opened is the one moved into: check it is nightshift's own.
    let stat = rustix::fs::fstat(&folder)?;
    own_folder(&path, stat.st_uid, stat.st_mode)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(folder)
}

/// Renames `from/name` to `to/target` unless `target` exists (`EXIST` then). Where the file system
/// has no `RENAME_NOREPLACE` (NFS, older ZFS): a hard link, which never overwrites either, then
/// the old name goes.
fn move_no_replace(
    from: &OwnedFd,
    name: &str,
    to: &OwnedFd,
    target: &str,
) -> Result<(), rustix::io::Errno> {
    match rustix::fs::renameat_with(from, name, to, target, RenameFlags::NOREPLACE) {
        Err(rustix::io::Errno::INVAL) => {
            rustix::fs::linkat(from, name, to, target, rustix::fs::AtFlags::empty())?;
            rustix::fs::unlinkat(from, name, rustix::fs::AtFlags::empty())
        }
        other => other,
    }
}

/// Moves `dir/name` into `dir/folder/` (made 0700 if missing), under its own name or, when that
/// is taken, `name.1`, `name.2`…; never follows a symlink, never overwrites. The moved file is
/// made private. Returns its new path.
pub fn move_into(dir: &Path, folder: &str, name: &str) -> std::io::Result<PathBuf> {
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let sub = open_subfolder(&dir_fd, dir, folder)?;
    let mut target = name.to_owned();
    let mut n = 0;
    loop {
        match move_no_replace(&dir_fd, name, &sub, &target) {
            Ok(()) => break,
            Err(rustix::io::Errno::EXIST) => {
                n += 1;
                target = format!("{name}.{n}");
            }
            Err(e) => return Err(e.into()),
        }
    }
    // A job file keeps its mode when moved: the copy kept here is nightshift's alone.
    let moved_path = dir.join(folder).join(&target);
    let moved = match rustix::fs::openat(
        &sub,
        target.as_str(),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC | OFlags::NOCTTY,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        // Another user's file nightshift may not open (the folder keeps it private), or a link
        // or a device that was moved as it is: it moved, its mode is left alone.
        Err(rustix::io::Errno::ACCESS | rustix::io::Errno::LOOP | rustix::io::Errno::NXIO) => {
            return Ok(moved_path);
        }
        Err(e) => return Err(e.into()),
    };
    let (file_mode, _, group) = kept_modes();
    let stat = rustix::fs::fstat(&moved)?;
    if !is_mine(stat.st_uid) {
        return Ok(moved_path); // another user's file: the folder keeps it private
    }
    if let Some(gid) = group.filter(|&g| g != stat.st_gid) {
        rustix::fs::fchown(&moved, None, Some(rustix::fs::Gid::from_raw(gid)))?;
    }
    if stat.st_mode & 0o7777 != file_mode {
        rustix::fs::fchmod(&moved, Mode::from_raw_mode(file_mode))?;
    }
    Ok(moved_path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn me() -> Identity {
        Identity {
            uid: 1000,
            gids: vec![1000, 50],
        }
    }

    fn facts(mode: u32, uid: u32, gid: u32) -> Facts {
        Facts { mode, uid, gid }
    }

    #[test]
    fn folders_only_their_owner_and_its_groups_can_change_are_trusted() {
        let p = Path::new("/srv/jobs");
        let ok = |f: Facts, last: bool| judge(p, "jobs_dir", f, &me(), last);
        assert_eq!(ok(facts(0o40700, 1000, 1000), true), Ok(()));
        assert_eq!(ok(facts(0o40755, 0, 0), false), Ok(()), "root's /srv");
        assert_eq!(
            ok(facts(0o40770, 1000, 50), true),
            Ok(()),
            "a group nightshift is in"
        );
        assert!(matches!(
            ok(facts(0o40777, 1000, 1000), true),
            Err(Untrusted::WorldWritable { .. })
        ));
        assert!(matches!(
            ok(facts(0o40775, 1000, 7), true),
            Err(Untrusted::GroupWritable { gid: 7, .. })
        ));
        assert!(matches!(
            ok(facts(0o40700, 1001, 1000), true),
            Err(Untrusted::ForeignOwner { uid: 1001, .. })
        ));
        // /tmp: a sticky parent is fine, a sticky jobs_dir is not (anyone could add a job).
        assert_eq!(ok(facts(0o41777, 0, 0), false), Ok(()));
        assert!(ok(facts(0o41777, 1000, 1000), true).is_err());
    }

    #[test]
    fn the_fix_is_named() {
        let e = judge(
            Path::new("/srv/jobs"),
            "jobs_dir",
            facts(0o40777, 1000, 1000),
            &me(),
            true,
        )
        .expect_err("world-writable");
        assert!(e.to_string().contains("chmod o-w /srv/jobs"), "{e}");
    }

    #[test]
    fn only_its_own_folder_is_moved_into() {
        let dir = tempfile::tempdir().expect("temp dir");
        let ingested = dir.path().join("ingested");
        assert_eq!(check_own_folder(&ingested), Ok(()), "not there yet");
        std::fs::create_dir(&ingested).expect("mkdir");
        std::fs::set_permissions(&ingested, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        assert_eq!(check_own_folder(&ingested), Ok(()));
        // A folder anyone may write, put in place of nightshift's.
        std::fs::set_permissions(&ingested, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        assert!(matches!(
            check_own_folder(&ingested),
            Err(Untrusted::NotOwn { mode: 0o777, .. })
        ));
        std::fs::write(dir.path().join("a.jsonl"), "1").expect("write");
        let e = move_into(dir.path(), "ingested", "a.jsonl").expect_err("refused");
        assert!(e.to_string().contains("not nightshift's own folder"), "{e}");
        assert!(dir.path().join("a.jsonl").exists(), "nothing moved");
    }

    #[test]
    fn a_move_never_follows_a_link_nor_overwrites() {
        let dir = tempfile::tempdir().expect("temp dir");
        let elsewhere = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("a.jsonl"), "1").expect("write");
        let first = move_into(dir.path(), "ingested", "a.jsonl").expect("moved");
        assert_eq!(first, dir.path().join("ingested/a.jsonl"));
        std::fs::write(dir.path().join("a.jsonl"), "2").expect("write");
        let second = move_into(dir.path(), "ingested", "a.jsonl").expect("moved");
        assert_eq!(second, dir.path().join("ingested/a.jsonl.1"));
        assert_eq!(std::fs::read_to_string(first).expect("read"), "1");
        let mode = std::fs::metadata(&second).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o600);
        // A folder swapped for a link: nothing moves.
        std::os::unix::fs::symlink(elsewhere.path(), dir.path().join("rejected")).expect("link");
        std::fs::write(dir.path().join("b.jsonl"), "3").expect("write");
        let e = move_into(dir.path(), "rejected", "b.jsonl").expect_err("refused");
        assert!(e.to_string().contains("never follows links"), "{e}");
        assert!(dir.path().join("b.jsonl").exists());
        assert_eq!(
            std::fs::read_dir(elsewhere.path()).expect("list").count(),
            0
        );
        // A job file that is a link is not opened.
        std::os::unix::fs::symlink(dir.path().join("b.jsonl"), dir.path().join("c.jsonl"))
            .expect("link");
        let e = open_regular(&dir.path().join("c.jsonl")).expect_err("refused");
        assert!(e.to_string().contains("is a symlink"), "{e}");
        assert!(open_regular(&dir.path().join("b.jsonl")).is_ok());
    }
}
