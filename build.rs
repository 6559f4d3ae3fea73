//! Tells the binary which commit it was built from, for `nightshift --version`
//! (`nightshift 0.1.0 (commit 665b5a0c1d2e)`): from git when the package is its own repository's
//! top, else from the `.cargo_vcs_info.json` that `cargo package` writes into a crates.io package,
//! else `unknown`. Nothing here fails the build: a missing git, a tarball without `.git` or a
//! strange repository only make the commit `unknown`.
//!
//! Whether the tree was dirty is not told: the script reruns only when HEAD moves (below), so a
//! `-dirty` mark would stay on, or stay off, through later edits and say something untrue.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let commit = from_git(dir)
        .or_else(|| from_package(dir))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("cargo::rustc-env=NIGHTSHIFT_COMMIT={commit}");
    // Without a rerun-if-changed line, cargo would run this again after any change in the package.
    println!("cargo::rerun-if-changed=build.rs");
}

/// `git rev-parse --short=12 HEAD`, if `dir` is the top of a git work tree (a package unpacked
/// inside another project's repository must not take that project's commit); and the files to
/// watch so that a new commit or checkout runs this again.
fn from_git(dir: &Path) -> Option<String> {
    let top = git(dir, &["rev-parse", "--show-toplevel"])?;
    if Path::new(&top).canonicalize().ok()? != dir.canonicalize().ok()? {
        return None;
    }
    let commit = git(dir, &["rev-parse", "--short=12", "HEAD"])?;
    if commit.len() < 7 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    // HEAD names the branch (or the commit, detached); the branch's ref file or, once packed,
    // packed-refs names its commit. In a worktree (`.git` is a file) git knows where they are.
    let mut watch = vec![git_path(dir, "HEAD")?];
    if let Some(branch) = git(dir, &["symbolic-ref", "-q", "HEAD"]) {
        let loose = git_path(dir, &branch)?;
        // A packed branch has no file of its own until its next commit writes one: watch its
        // folder then (a path that does not exist would make cargo run this at every build).
        match (loose.exists(), loose.parent()) {
            (true, _) => watch.push(loose),
            (false, Some(folder)) if folder.exists() => watch.push(folder.to_owned()),
            _ => {}
        }
    }
    watch.extend(git_path(dir, "packed-refs").filter(|p| p.exists()));
    for path in watch {
        println!("cargo::rerun-if-changed={}", path.display());
    }
    Some(commit)
}

/// The commit `cargo package` recorded, in a package from crates.io (no `.git` in it).
fn from_package(dir: &Path) -> Option<String> {
    let info = std::fs::read_to_string(dir.join(".cargo_vcs_info.json")).ok()?;
    let after = &info[info.find("\"sha1\"")? + "\"sha1\"".len()..];
    let sha: String = after
        .trim_start_matches([' ', ':', '"'])
        .chars()
        .take_while(char::is_ascii_hexdigit)
        .collect();
    (sha.len() >= 12).then(|| sha[..12].to_owned())
}

/// Where git keeps `name` (`git rev-parse --git-path`), as an absolute path.
fn git_path(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = PathBuf::from(git(dir, &["rev-parse", "--git-path", name])?);
    Some(if path.is_absolute() {
        path
    } else {
        dir.join(path)
    })
}

/// A git command's output, trimmed; None if git is missing or the command fails.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(dir)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_owned();
    (!text.is_empty()).then_some(text)
}
