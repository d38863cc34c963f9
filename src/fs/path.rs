//! Paths inside a volume: `/`-separated (also `\` on NTFS and FAT), `.`
//! and `..` resolved without ever leaving the root, an NTFS stream after
//! the last `:`, and the `PART:` prefix that names a partition.

use super::error::{FsError, Result};

/// A path split into components, with an NTFS stream name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FsPath {
    pub comps: Vec<String>,
    pub stream: Option<String>,
}

impl FsPath {
    /// `/a/b`, `/` for the root.
    pub fn display(&self) -> String {
        let mut s = String::new();
        for c in &self.comps {
            s.push('/');
            s.push_str(c);
        }
        if s.is_empty() {
            s.push('/');
        }
        if let Some(stream) = &self.stream {
            s.push(':');
            s.push_str(stream);
        }
        s
    }
}

/// Splits `path`. `windows`: `\` separates too and `name:stream` names a
/// stream (NTFS; FAT takes `\` but has no streams).
pub(crate) fn parse(path: &str, backslash: bool, streams: bool) -> Result<FsPath> {
    let invalid = |reason| FsError::InvalidPath { path: path.to_string(), reason };
    if path.contains('\0') {
        return Err(invalid("contains a NUL"));
    }
    let mut comps: Vec<String> = Vec::new();
    let mut stream = None;
    let parts: Vec<&str> = path.split(|c| c == '/' || (backslash && c == '\\')).collect();
    let last = parts.len().saturating_sub(1);
    for (i, part) in parts.into_iter().enumerate() {
        let mut part = part;
        if streams
            && i == last
            && let Some((name, s)) = part.split_once(':')
        {
            if s.is_empty() || s.contains(':') {
                return Err(invalid("a stream name after ':' must be one non-empty name"));
            }
            stream = Some(s.to_string());
            part = name;
        }
        match part {
            "" | "." => {}
            ".." => {
                comps.pop();
            }
            c => comps.push(c.to_string()),
        }
    }
    if stream.is_some() && comps.is_empty() {
        return Err(invalid("the root has no streams"));
    }
    Ok(FsPath { comps, stream })
}

/// Why an entry's `name` cannot be named in a path here, if it cannot: a
/// `/` or `\` (read as separators) or, where streams are named so, a `:`.
/// ntfs-3g writes such names in the POSIX namespace.
pub(crate) fn unaddressable(name: &str, streams: bool) -> Option<String> {
    (name.contains(['/', '\\', '\0']) || (streams && name.contains(':')))
        .then(|| format!("the name {name:?} holds a character paths here take as a separator; listed, not read"))
}

/// Splits `PART:PATH` into the partition (a number or label) and the path;
/// a spec whose text after the first `:` does not start with `/` (or is
/// not empty) is all path, so `file:stream` stays a stream.
pub fn split_spec(spec: &str) -> (Option<&str>, &str) {
    match spec.split_once(':') {
        Some((part, rest)) if !part.contains('/') && (rest.is_empty() || rest.starts_with('/')) => {
            (Some(part), if rest.is_empty() { "/" } else { rest })
        }
        _ => (None, spec),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_never_leave_the_root_and_streams_split() {
        let p = parse("/a/./b/../../../c//d", false, false).unwrap();
        assert_eq!(p.comps, ["c", "d"]);
        assert_eq!(p.display(), "/c/d");
        let p = parse(r"\Windows\notepad.exe:Zone.Identifier", true, true).unwrap();
        assert_eq!(
            (p.comps.clone(), p.stream.as_deref()),
            (vec!["Windows".to_string(), "notepad.exe".into()], Some("Zone.Identifier"))
        );
        assert_eq!(parse("a:b", false, false).unwrap().comps, ["a:b"]);
        assert!(parse("a:", true, true).is_err());
        assert!(parse("/:s", true, true).is_err());
        assert!(parse("a\0b", false, false).is_err());
        assert_eq!(parse("", false, false).unwrap().display(), "/");
    }

    #[test]
    fn partition_prefixes_are_told_from_streams() {
        assert_eq!(split_spec("2:/Windows"), (Some("2"), "/Windows"));
        assert_eq!(split_spec("System:"), (Some("System"), "/"));
        assert_eq!(split_spec("/a/file:stream"), (None, "/a/file:stream"));
        assert_eq!(split_spec("file:stream"), (None, "file:stream"));
        assert_eq!(split_spec("/plain"), (None, "/plain"));
    }
}
