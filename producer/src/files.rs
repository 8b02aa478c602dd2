//! Writing a file so that no reader ever sees half of it: the bytes go to a temporary file of its own name (two
//! processes writing the same file at once never write into one temporary file), are synced, and the temporary
//! file is renamed over the target, so the last complete write wins. State, run reports, history and HTML pages
//! are all written this way.

use std::io::Write;
use std::path::Path;

use uuid::Uuid;

/// Creates `dir` (and any missing parent) readable by its owner only, as the state directory and what is in it are:
/// the users feed holds every user's phones, addresses and manager, the run history their names. An existing `dir`
/// (an earlier release's, made 0755) is narrowed too where this process may; its parents are left as they are.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let wider = std::fs::metadata(dir).is_ok_and(|m| m.permissions().mode() & 0o077 != 0);
        if wider {
            // Best effort: a directory someone else owns stays as they made it.
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
    }
    Ok(())
}

/// Replaces `path` with `bytes` atomically (a unique temporary file beside it, fsync, rename).
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", Uuid::new_v4().simple()));
    let written = std::fs::File::create(&tmp).and_then(|mut file| {
        file.write_all(bytes)?;
        file.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(error) => {
            // Nothing half-written is left behind under a name of ours.
            let _ = std::fs::remove_file(&tmp);
            Err(error)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("cm-files-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }

    /// Failed before the fix: the state directory was made with the umask (0755), so other local users could read
    /// the users feed (everyone's phones and addresses); an earlier release's directory stays 0755 unless narrowed.
    #[cfg(unix)]
    #[test]
    fn a_private_directory_is_its_owners_alone() {
        use std::os::unix::fs::PermissionsExt;
        let dir = temp_dir().join("state").join("contactmirror");
        let mode = |dir: &Path| {
            std::fs::metadata(dir)
                .expect("metadata")
                .permissions()
                .mode()
                & 0o777
        };
        create_private_dir(&dir).expect("created");
        assert_eq!(mode(&dir), 0o700);
        // An earlier release's directory, readable by everyone, is narrowed.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        create_private_dir(&dir).expect("an existing directory is fine");
        assert_eq!(mode(&dir), 0o700);
    }

    #[test]
    fn replaces_the_file_and_leaves_no_temporary_file() {
        let dir = temp_dir();
        let path = dir.join("report.json");
        write_atomically(&path, b"first").expect("first write");
        write_atomically(&path, b"second").expect("second write");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let names: Vec<_> = std::fs::read_dir(&dir)
            .expect("list")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("report.json")]);
    }

    #[test]
    fn a_failed_write_names_the_cause_and_leaves_nothing() {
        let dir = temp_dir();
        let path = dir.join("missing").join("report.json");
        let error = write_atomically(&path, b"x").expect_err("no such directory");
        assert_eq!(error.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(std::fs::read_dir(&dir).expect("list").count(), 0);
    }
}
