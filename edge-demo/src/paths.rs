//! Outputs that would destroy an input are refused before any work starts (issue #32):
//! the same file, whether named alike, through a relative path, a symbolic link or a hard
//! link.

use std::path::{Path, PathBuf};

/// The canonical form of `p`: of the file when it exists, else of its parent directory
/// joined with the file name (an output that does not exist yet).
fn canonical(p: &Path) -> Option<PathBuf> {
    if let Ok(c) = p.canonicalize() {
        return Some(c);
    }
    let name = p.file_name()?;
    let parent = match p.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.canonicalize().ok()?,
        _ => std::env::current_dir().ok()?,
    };
    Some(parent.join(name))
}

/// Whether `a` and `b` name the same file (hard links included, on Unix).
pub fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
    }
    match (canonical(a), canonical(b)) {
        (Some(x), Some(y)) => x == y,
        _ => false,
    }
}

/// Refuse `out` (named by its flag) when it is any of `inputs` (flag, path), or when it
/// cannot be written where it is (a directory, or a parent directory that does not exist)
/// — before the work that would produce it.
pub fn refuse_overwrite(out: (&str, &Path), inputs: &[(&str, &Path)]) -> Result<(), String> {
    if out.1.is_dir() {
        return Err(format!("{} {} is a directory", out.0, out.1.display()));
    }
    if let Some(parent) = out.1.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.is_dir() {
            return Err(format!(
                "{} {}: the directory {} does not exist",
                out.0,
                out.1.display(),
                parent.display()
            ));
        }
    }
    for (flag, input) in inputs {
        if same_file(out.1, input) {
            return Err(format!(
                "{} {} is the same file as {flag} {}: writing it would destroy that input; choose another output",
                out.0,
                out.1.display(),
                input.display()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_files_through_links_and_relative_paths() {
        let d = std::env::temp_dir().join(format!("modula-paths-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let a = d.join("a.txt");
        std::fs::write(&a, b"x").unwrap();
        assert!(same_file(&a, &d.join(".").join("a.txt")));
        assert!(!same_file(&a, &d.join("b.txt")));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&a, d.join("s.txt")).unwrap();
            std::fs::hard_link(&a, d.join("h.txt")).unwrap();
            assert!(same_file(&d.join("s.txt"), &a));
            assert!(same_file(&d.join("h.txt"), &a));
        }
        let e = refuse_overwrite(("--out", &a), &[("--data", &a)]).unwrap_err();
        assert!(e.contains("--out") && e.contains("--data"), "{e}");
        assert!(refuse_overwrite(("--out", &d.join("new.gguf")), &[("--in", &a)]).is_ok());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
