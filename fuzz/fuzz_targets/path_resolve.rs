//! A requested boot file name resolved against the images root (TFTP, the HTTP paths): every
//! name that resolves names a file inside the root, whatever its dots, slashes, encodings or
//! the symbolic links in the root (one pointing out of it, one inside).
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

struct Root {
    _dir: tempfile::TempDir,
    path: PathBuf,
    real: PathBuf,
}

fn root() -> &'static Root {
    static ROOT: OnceLock<Root> = OnceLock::new();
    ROOT.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let path = dir.path().join("images");
        std::fs::create_dir_all(path.join("plinth/sub")).unwrap();
        std::fs::write(path.join("plinth/vmlinuz"), b"k").unwrap();
        std::fs::write(path.join("ipxe.efi"), b"e").unwrap();
        std::fs::write(dir.path().join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), path.join("out")).unwrap();
        std::os::unix::fs::symlink("../ipxe.efi", path.join("plinth/in")).unwrap();
        let real = path.canonicalize().unwrap();
        Root {
            _dir: dir,
            path,
            real,
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(name) = std::str::from_utf8(data) else {
        return;
    };
    let r = root();
    if let Ok(p) = plinth_core::files::resolve(&r.path, name) {
        assert!(
            p.starts_with(&r.real),
            "{name:?} resolved to {p:?}, outside the root"
        );
        assert!(p.is_file(), "{name:?} resolved to {p:?}, not a file");
    }
});
