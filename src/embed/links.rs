//! The one rule for symlinks inside a directory component, shared by the build script (build/archive.rs, packing) and
//! the runtime (unpacking): a relative target that, resolved lexically from the link's own
//! directory, never leaves the component.

use std::path::{Component as PathPart, Path};

pub(crate) fn link_stays_inside(link: &Path, target: &Path) -> bool {
    let mut depth = link.components().count() as i64 - 1;
    for part in target.components() {
        match part {
            PathPart::Normal(_) => depth += 1,
            PathPart::CurDir => {}
            PathPart::ParentDir => depth -= 1,
            PathPart::RootDir | PathPart::Prefix(_) => return false,
        }
        if depth < 0 {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        assert!(link_stays_inside(Path::new("a/b"), Path::new("c")));
        assert!(link_stays_inside(Path::new("a/b"), Path::new("../c")));
        assert!(!link_stays_inside(Path::new("a/b"), Path::new("../../c")));
        assert!(!link_stays_inside(Path::new("b"), Path::new("/etc/passwd")));
        assert!(!link_stays_inside(Path::new("a/b"), Path::new("x/../../../c")));
    }
}
