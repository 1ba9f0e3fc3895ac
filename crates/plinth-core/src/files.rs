//! Names asked for by booting machines (TFTP file names, HTTP boot paths), resolved to files
//! confined to the images root. The one place that decides whether a name may be served:
//! the TFTP server and the HTTP image endpoint both ask it.

use std::path::{Component, Path, PathBuf};

/// The longest name a client may ask for (TFTP's practical limit; no firmware comes close).
pub const MAX_NAME: usize = 255;

/// Why a name is not served. The Display is safe to send to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("empty file name")]
    Empty,
    #[error("file name contains a NUL byte")]
    Nul,
    #[error("file name longer than {MAX_NAME} bytes")]
    TooLong,
    #[error("absolute paths are not served")]
    Absolute,
    #[error("file name contains a backslash")]
    Backslash,
    #[error("`..`, `.` and empty path components are not served")]
    Traversal,
    #[error("the file lies outside the images root")]
    OutsideRoot,
    #[error("file not found")]
    NotFound,
    #[error("not a regular file")]
    NotAFile,
    #[error("the file cannot be read")]
    Unreadable,
}

impl Refusal {
    /// Refusals that are attempts to escape the root (logged as warnings, not as misses).
    pub fn is_hostile(&self) -> bool {
        matches!(
            self,
            Refusal::Nul
                | Refusal::TooLong
                | Refusal::Absolute
                | Refusal::Backslash
                | Refusal::Traversal
                | Refusal::OutsideRoot
        )
    }
}

/// Checks the shape of `name` without touching the file system: relative, `/`-separated,
/// no `.`/`..`/empty components, no NUL or backslash, at most [`MAX_NAME`] bytes.
pub fn check_name(name: &str) -> Result<(), Refusal> {
    if name.is_empty() {
        return Err(Refusal::Empty);
    }
    if name.contains('\0') {
        return Err(Refusal::Nul);
    }
    if name.len() > MAX_NAME {
        return Err(Refusal::TooLong);
    }
    if name.starts_with('/') {
        return Err(Refusal::Absolute);
    }
    if name.contains('\\') {
        return Err(Refusal::Backslash);
    }
    if name
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(Refusal::Traversal);
    }
    // Belt and braces: what std makes of it must be plain components only.
    if !Path::new(name)
        .components()
        .all(|c| matches!(c, Component::Normal(_)))
    {
        return Err(Refusal::Traversal);
    }
    Ok(())
}

/// Resolves `name` under `root` to a regular file whose real path (symlinks followed) is
/// still inside the root. Symlinks that stay inside the root are allowed.
pub fn resolve(root: &Path, name: &str) -> Result<PathBuf, Refusal> {
    check_name(name)?;
    let root = root.canonicalize().map_err(|_| Refusal::NotFound)?;
    let real = match root.join(name).canonicalize() {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Refusal::NotFound),
        Err(_) => return Err(Refusal::Unreadable),
    };
    if !real.starts_with(&root) {
        return Err(Refusal::OutsideRoot);
    }
    let meta = std::fs::metadata(&real).map_err(|_| Refusal::Unreadable)?;
    if !meta.is_file() {
        return Err(Refusal::NotAFile);
    }
    Ok(real)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_confined_to_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("images");
        std::fs::create_dir_all(root.join("ipxe")).unwrap();
        std::fs::write(root.join("ipxe/undionly.kpxe"), b"x").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink("../secret", root.join("escape")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("passwd")).unwrap();
        std::os::unix::fs::symlink("ipxe/undionly.kpxe", root.join("inside")).unwrap();

        assert_eq!(
            resolve(&root, "ipxe/undionly.kpxe").unwrap(),
            root.canonicalize().unwrap().join("ipxe/undionly.kpxe")
        );
        assert!(resolve(&root, "inside").is_ok());
        for (name, why) in [
            ("", Refusal::Empty),
            ("../secret", Refusal::Traversal),
            ("ipxe/../../secret", Refusal::Traversal),
            ("ipxe/./undionly.kpxe", Refusal::Traversal),
            ("ipxe//undionly.kpxe", Refusal::Traversal),
            ("/etc/passwd", Refusal::Absolute),
            ("..\\secret", Refusal::Backslash),
            ("ipxe/undionly.kpxe\0.txt", Refusal::Nul),
            ("escape", Refusal::OutsideRoot),
            ("passwd", Refusal::OutsideRoot),
            ("ipxe", Refusal::NotAFile),
            ("missing", Refusal::NotFound),
        ] {
            assert_eq!(resolve(&root, name), Err(why.clone()), "{name:?}");
        }
        assert_eq!(resolve(&root, &"a".repeat(256)), Err(Refusal::TooLong));
        assert!(Refusal::OutsideRoot.is_hostile() && !Refusal::NotFound.is_hostile());
    }
}
