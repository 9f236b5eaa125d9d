//! File names for sites. A site's name may come from a data value (`split --partition
//! column:NAME`), and data may be hostile: a name becomes a file name only if it stays a
//! plain name inside the output folder.

use std::path::{Path, PathBuf};

/// The most bytes of a file name `split` writes (file systems allow 255).
const MAX_STEM_BYTES: usize = 200;

/// `dir/<name>.csv`, or why `name` cannot be a file name: empty, `.`/`..`, a path separator,
/// a control character, a leading dot (hidden), or longer than 200 bytes.
pub fn site_csv_path(dir: &Path, name: &str) -> Result<PathBuf, String> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." || name.starts_with('.') {
        Some("it starts with a dot")
    } else if name.contains(['/', '\\']) {
        Some("it contains a path separator")
    } else if name.chars().any(char::is_control) {
        Some("it contains a control character")
    } else if name.len() > MAX_STEM_BYTES {
        Some("it is longer than 200 bytes")
    } else {
        None
    };
    match why {
        Some(why) => {
            let shown: String = name.chars().filter(|c| !c.is_control()).take(60).collect();
            Err(format!("site `{shown}` cannot be written as a file in {}: {why}", dir.display()))
        }
        None => Ok(dir.join(format!("{name}.csv"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_would_leave_the_folder_are_refused() {
        let dir = Path::new("out");
        assert_eq!(site_csv_path(dir, "VA Long Beach").unwrap(), dir.join("VA Long Beach.csv"));
        for bad in ["../escape", "..", "a/b", "a\\b", "/etc/passwd", ".hidden", "", "new\nline", &"x".repeat(201)] {
            let err = site_csv_path(dir, bad).unwrap_err();
            assert!(err.contains("cannot be written"), "{bad:?}: {err}");
        }
    }
}
