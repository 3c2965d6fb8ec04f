//! The token directory: one file per Secret key, each replaced atomically (temp file in the
//! same directory, fsync, rename, then fsync of the directory), so a reader sees either the
//! old or the new content, never a partial file. Blocking I/O: call from `spawn_blocking`.

use std::fs::{self, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Prefix of temporary files; keys starting with it are never written.
pub const TEMP_PREFIX: &str = ".exact-agent-tmp-";

/// Longest key written (the API server's limit on Secret keys).
const MAX_KEY_LEN: usize = 253;

/// Why the token directory could not be updated. Never holds a file's content.
#[derive(Debug, Error)]
pub enum FilesError {
    /// The directory is missing and could not be created, or is not a directory.
    #[error("cannot use token directory {path}: {error}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
    /// A file could not be written, synced or renamed into place.
    #[error("cannot write token file {path}: {error}")]
    Write {
        /// The file being replaced.
        path: PathBuf,
        /// The I/O error.
        error: io::Error,
    },
}

/// Whether a Secret key names a refresh token in any spelling (`refresh_token`,
/// `refresh-token`, `refreshToken`, `exact.refresh_token`, ...). Such keys are never written,
/// served or kept in memory, whatever the Secret holds.
pub fn is_refresh_token_key(key: &str) -> bool {
    let normalized: String = key
        .chars()
        .filter(char::is_ascii_alphanumeric)
        .map(|c| c.to_ascii_lowercase())
        .collect();
    normalized.contains("refreshtoken")
}

/// Whether a Secret key may become a file name in the token directory: a plain name (no
/// `/`, not `.`/`..`, not starting with `..` like the kubelet's own entries or with
/// [`TEMP_PREFIX`]), at most 253 bytes, and not a refresh token.
pub fn is_publishable_key(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= MAX_KEY_LEN
        && key != "."
        && !key.starts_with("..")
        && !key.starts_with(TEMP_PREFIX)
        && !key.contains(['/', '\0'])
        && !is_refresh_token_key(key)
}

/// The directory the agent mirrors the Secret into.
#[derive(Debug, Clone)]
pub struct TokenDir {
    dir: PathBuf,
    mode: u32,
}

impl TokenDir {
    /// A token directory at `dir` whose files get permission bits `mode` (e.g. `0o640`).
    pub fn new(dir: impl Into<PathBuf>, mode: u32) -> Self {
        TokenDir {
            dir: dir.into(),
            mode: mode & 0o777,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (mode 0750) when missing and removes temporary files left by a
    /// previous run that was killed mid-write.
    pub fn prepare(&self) -> Result<(), FilesError> {
        let dir_err = |error| FilesError::Dir {
            path: self.dir.clone(),
            error,
        };
        if !self.dir.is_dir() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o750)
                .create(&self.dir)
                .map_err(dir_err)?;
        }
        for entry in fs::read_dir(&self.dir).map_err(dir_err)? {
            let entry = entry.map_err(dir_err)?;
            if entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                // Best effort: a leftover we cannot remove is harmless.
                let _ = fs::remove_file(entry.path());
            }
        }
        Ok(())
    }

    /// Writes each `(key, value)` whose key is publishable and whose file content differs,
    /// in the given order, each atomically; then syncs the directory once. Returns the keys
    /// whose files changed. Keys that are not publishable are skipped silently (the caller
    /// filters and reports them).
    pub fn write_all<'a, I>(&self, entries: I) -> Result<Vec<String>, FilesError>
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        let mut changed = Vec::new();
        for (key, value) in entries {
            if !is_publishable_key(key) {
                continue;
            }
            let path = self.dir.join(key);
            if fs::read(&path).is_ok_and(|current| current == value) {
                continue;
            }
            write_atomic(&self.dir, key, value, self.mode).map_err(|error| FilesError::Write {
                path: path.clone(),
                error,
            })?;
            changed.push(key.to_string());
        }
        if !changed.is_empty() {
            sync_dir(&self.dir).map_err(|error| FilesError::Dir {
                path: self.dir.clone(),
                error,
            })?;
        }
        Ok(changed)
    }
}

/// Replaces `dir/name` with `contents` atomically: writes `dir/<TEMP_PREFIX><name>`, sets
/// `mode`, fsyncs it and renames it over `name`. On error the temporary file is removed and
/// the old file is left untouched. The caller syncs the directory.
pub fn write_atomic(dir: &Path, name: &str, contents: &[u8], mode: u32) -> io::Result<()> {
    let tmp = dir.join(format!("{TEMP_PREFIX}{name}"));
    let result = (|| {
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The umask may have narrowed the creation mode, and a leftover may have another.
        file.set_permissions(Permissions::from_mode(mode))?;
        file.write_all(contents)?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, dir.join(name))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Makes renames in `dir` durable.
fn sync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            let n: u64 = rand::random();
            let p = std::env::temp_dir().join(format!("exact-agent-files-{n:016x}"));
            fs::create_dir_all(&p).expect("create temp dir");
            TempDir(p)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn writes_each_key_with_mode_and_no_leftovers() {
        let t = TempDir::new();
        let dir = TokenDir::new(&t.0, 0o640);
        let changed = dir
            .write_all([
                ("access_token", b"AT1".as_slice()),
                ("token_type", b"Bearer".as_slice()),
            ])
            .expect("write");
        assert_eq!(changed, vec!["access_token", "token_type"]);
        assert_eq!(fs::read(t.0.join("access_token")).expect("read"), b"AT1");
        let mode = fs::metadata(t.0.join("access_token")).expect("meta").mode() & 0o777;
        assert_eq!(mode, 0o640);
        assert_eq!(names(&t.0), vec!["access_token", "token_type"]);
    }

    #[test]
    fn replaces_by_rename_and_skips_unchanged_files() {
        let t = TempDir::new();
        let dir = TokenDir::new(&t.0, 0o600);
        dir.write_all([
            ("access_token", b"old".as_slice()),
            ("division", b"1".as_slice()),
        ])
        .expect("first write");
        let ino_token = fs::metadata(t.0.join("access_token")).expect("meta").ino();
        let ino_div = fs::metadata(t.0.join("division")).expect("meta").ino();
        let changed = dir
            .write_all([
                ("access_token", b"new".as_slice()),
                ("division", b"1".as_slice()),
            ])
            .expect("second write");
        assert_eq!(changed, vec!["access_token"]);
        assert_eq!(fs::read(t.0.join("access_token")).expect("read"), b"new");
        // A new inode: the old file was replaced, not rewritten in place.
        assert_ne!(
            fs::metadata(t.0.join("access_token")).expect("meta").ino(),
            ino_token
        );
        assert_eq!(
            fs::metadata(t.0.join("division")).expect("meta").ino(),
            ino_div
        );
    }

    #[test]
    fn never_writes_refresh_tokens_or_unsafe_names() {
        let t = TempDir::new();
        let dir = TokenDir::new(&t.0, 0o600);
        let changed = dir
            .write_all([
                ("refresh_token", b"RT".as_slice()),
                ("refresh-token", b"RT".as_slice()),
                ("RefreshToken", b"RT".as_slice()),
                ("..data", b"x".as_slice()),
                ("a/b", b"x".as_slice()),
                (".", b"x".as_slice()),
                ("", b"x".as_slice()),
                (".exact-agent-tmp-access_token", b"x".as_slice()),
                ("access_token", b"AT".as_slice()),
            ])
            .expect("write");
        assert_eq!(changed, vec!["access_token"]);
        assert_eq!(names(&t.0), vec!["access_token"]);
    }

    #[test]
    fn refresh_token_keys_are_recognised_in_any_spelling() {
        for k in [
            "refresh_token",
            "refresh-token",
            "refreshToken",
            "REFRESH_TOKEN",
            "exact.refresh_token",
        ] {
            assert!(is_refresh_token_key(k), "{k}");
        }
        for k in [
            "access_token",
            "expires_at",
            "division",
            "api_base_url",
            "token_type",
        ] {
            assert!(!is_refresh_token_key(k), "{k}");
            assert!(is_publishable_key(k), "{k}");
        }
    }

    #[test]
    fn prepare_creates_the_directory_and_removes_stale_temp_files() {
        let t = TempDir::new();
        let sub = t.0.join("run/exact");
        let dir = TokenDir::new(&sub, 0o600);
        dir.prepare().expect("prepare creates");
        assert!(sub.is_dir());
        fs::write(sub.join(format!("{TEMP_PREFIX}access_token")), b"partial").expect("seed");
        fs::write(sub.join("access_token"), b"kept").expect("seed");
        dir.prepare().expect("prepare cleans");
        assert_eq!(names(&sub), vec!["access_token"]);
    }

    #[test]
    fn a_failed_write_leaves_the_old_file() {
        let t = TempDir::new();
        fs::write(t.0.join("access_token"), b"old").expect("seed");
        // A directory where the temp file should go makes the open fail.
        fs::create_dir(t.0.join(format!("{TEMP_PREFIX}access_token"))).expect("block");
        let err = TokenDir::new(&t.0, 0o600)
            .write_all([("access_token", b"new".as_slice())])
            .expect_err("must fail");
        assert!(err.to_string().contains("access_token"), "{err}");
        assert_eq!(fs::read(t.0.join("access_token")).expect("read"), b"old");
    }
}
