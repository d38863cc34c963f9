//! Opening images: format sniffing, options, and finding parents.

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use super::chain::Disk;
use super::error::{DiskError, Result};
use super::layer::Layer;
use super::raw::RawImage;
use super::source::Source;
use super::{HintKind, ImageFormat, ParentLink, VhdImage, VhdxImage};
use crate::io::{FileReader, ReadAt};

/// How to treat a VHD checksum that does not match.
///
/// VHDX checksums decide which header and region table are current, so they
/// are always enforced. VHD's footer and dynamic header checksums protect
/// nothing else, and some real images carry stale ones (hand-edited unique
/// ids); `Lenient` opens those with a warning in [`super::DiskInfo::warnings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChecksumPolicy {
    /// A bad checksum is an error (unless a valid footer copy stands in).
    #[default]
    Strict,
    /// A bad VHD checksum is a warning.
    Lenient,
}

/// Where a differencing disk's parent may be. Replace the default to map
/// Windows paths to local ones, or to look in a catalogue.
pub trait ParentResolver: Send + Sync {
    /// Candidate paths for the parent of `child`, in the order to try. Each
    /// existing candidate is opened and its identity checked against `link`;
    /// the first that matches is used.
    fn candidates(&self, child: &Path, link: &ParentLink) -> Vec<PathBuf>;
}

/// The standard search: every stored hint in order (relative paths against
/// the child's folder, then volume and absolute paths, then the VHD header's
/// parent name), and finally each hint's file name in the child's folder, so
/// a chain copied together to another machine still opens.
#[derive(Debug, Clone, Copy, Default)]
pub struct DefaultResolver;

impl ParentResolver for DefaultResolver {
    fn candidates(&self, child: &Path, link: &ParentLink) -> Vec<PathBuf> {
        let dir = child.parent().unwrap_or(Path::new("."));
        let mut out = Vec::new();
        for hint in &link.hints {
            match hint.kind {
                HintKind::Relative => out.push(normalize(&dir.join(native(&hint.path)))),
                // `\\?\Volume{GUID}\...` names a volume however it is
                // mounted: Windows opens it as it is; elsewhere it names
                // nothing (the file-name pass below may still find it).
                HintKind::Volume => {
                    if cfg!(windows) {
                        out.push(PathBuf::from(&hint.path));
                    }
                }
                HintKind::Absolute | HintKind::Name => {
                    let local = native(&hint.path);
                    let p = Path::new(&local);
                    if p.is_absolute() || looks_like_drive_path(&local) {
                        out.push(PathBuf::from(&local));
                    } else {
                        out.push(normalize(&dir.join(p)));
                    }
                }
            }
        }
        // A chain copied together keeps its file names, though not always
        // their case (Windows ignores it; a copy to a case-sensitive file
        // system keeps whichever the copier used).
        for hint in &link.hints {
            let local = hint.path.replace('\\', "/");
            if let Some(name) = Path::new(&local).file_name() {
                out.push(dir.join(name));
                if let Some(other) = same_name_ignoring_case(dir, name) {
                    out.push(other);
                }
            }
        }
        let mut seen = HashSet::new();
        out.retain(|p| seen.insert(p.clone()));
        out
    }
}

/// A stored Windows path as this platform opens it: as stored on Windows
/// (`C:\VMs\a.vhdx`, `\\?\C:\...`, `\\server\share\...`; Rust's standard
/// library adds the `\\?\` prefix a path over 260 characters needs);
/// elsewhere with `/` separators and without a `\\?\` prefix.
fn native(stored: &str) -> String {
    if cfg!(windows) {
        return stored.to_string();
    }
    let local = stored.replace('\\', "/");
    local.strip_prefix("//?/").unwrap_or(&local).to_string()
}

/// An entry of `dir` whose name is `name` but for case, when `name` itself
/// is not there. Looks at no more than 100,000 entries.
fn same_name_ignoring_case(dir: &Path, name: &std::ffi::OsStr) -> Option<PathBuf> {
    if dir.join(name).exists() {
        return None;
    }
    let want = name.to_str()?.to_lowercase();
    std::fs::read_dir(dir)
        .ok()?
        .take(100_000)
        .flatten()
        .find(|e| e.file_name().to_str().is_some_and(|n| n.to_lowercase() == want))
        .map(|e| e.path())
}

fn looks_like_drive_path(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() >= 2 && b[0].is_ascii_alphabetic() && b[1] == b':'
}

/// Removes `.` components (keeps `..`, which may cross a symlink).
fn normalize(p: &Path) -> PathBuf {
    p.components().filter(|c| *c != Component::CurDir).collect()
}

/// How to open an image. Cheap to clone.
#[derive(Clone)]
pub struct OpenOptions {
    pub(crate) checksums: ChecksumPolicy,
    resolver: Arc<dyn ParentResolver>,
    open_parents: bool,
    max_depth: usize,
    mmap: bool,
    confine_parents: bool,
}

impl std::fmt::Debug for OpenOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenOptions")
            .field("checksums", &self.checksums)
            .field("open_parents", &self.open_parents)
            .field("max_depth", &self.max_depth)
            .field("mmap", &self.mmap)
            .finish_non_exhaustive()
    }
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            checksums: ChecksumPolicy::Strict,
            resolver: Arc::new(DefaultResolver),
            open_parents: true,
            max_depth: 64,
            mmap: false,
            confine_parents: false,
        }
    }
}

/// Opens the image at `path` with default options: strict checksums,
/// parents found by [`DefaultResolver`] and identity-checked.
pub fn open(path: impl AsRef<Path>) -> Result<Disk> {
    OpenOptions::new().open(path)
}

impl OpenOptions {
    /// The defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// How to treat VHD checksum mismatches.
    pub fn checksums(mut self, policy: ChecksumPolicy) -> Self {
        self.checksums = policy;
        self
    }

    /// Replaces the parent search.
    pub fn resolver(mut self, resolver: impl ParentResolver + 'static) -> Self {
        self.resolver = Arc::new(resolver);
        self
    }

    /// Whether to open parents (default yes). Without them, reads of ranges
    /// the parent supplies fail and extents report them as `Parent`.
    pub fn open_parents(mut self, yes: bool) -> Self {
        self.open_parents = yes;
        self
    }

    /// Only open parents that lie in the child's own folder (default: no).
    /// Parent paths come from the image; an image from an untrusted source
    /// could otherwise make us open (read-only) any file its locators name.
    pub fn confine_parents(mut self, yes: bool) -> Self {
        self.confine_parents = yes;
        self
    }

    /// The deepest chain accepted (default 64): a guard against loops.
    pub fn max_depth(mut self, depth: usize) -> Self {
        self.max_depth = depth.max(1);
        self
    }

    /// Read through a memory map instead of `pread` (requires the `mmap`
    /// feature; ignored without it). See [`crate::io`] for the trade-off.
    pub fn mmap(mut self, yes: bool) -> Self {
        self.mmap = yes;
        self
    }

    /// Opens `path` (VHD or VHDX, sniffed) and its parents.
    pub fn open(&self, path: impl AsRef<Path>) -> Result<Disk> {
        let path = path.as_ref();
        let top = self.open_one(path)?;
        self.with_parents(top)
    }

    /// Opens an image held in memory or any other [`ReadAt`] (fuzzers,
    /// tests, images inside archives). Parents are not opened: a reader has
    /// no folder to look in.
    pub fn open_reader(&self, reader: Box<dyn ReadAt>, name: &str) -> Result<Disk> {
        let layer = self.open_layer(Source::new(reader, super::memory_path(name)))?;
        Ok(Disk::from_layers(vec![layer]))
    }

    /// A raw disk held in memory or any other [`ReadAt`]: its bytes are the disk.
    pub fn open_raw_reader(&self, reader: Box<dyn ReadAt>, name: &str) -> Disk {
        let source = Source::new(reader, super::memory_path(name));
        Disk::from_layers(vec![Layer::Raw(Box::new(RawImage::open(source)))])
    }

    /// Opens `path` as a raw image: its bytes are the disk. `path` may be a
    /// regular file or a block device (a host's snapshot device).
    pub fn open_raw(&self, path: impl AsRef<Path>) -> Result<Disk> {
        let path = path.as_ref();
        let reader = FileReader::open_device(path).map_err(|e| DiskError::io(path, 0, e))?;
        let source = Source::new(Box::new(reader), path.to_path_buf());
        Ok(Disk::from_layers(vec![Layer::Raw(Box::new(RawImage::open(source)))]))
    }

    fn reader(&self, path: &Path) -> Result<Box<dyn ReadAt>> {
        #[cfg(feature = "mmap")]
        if self.mmap {
            let map = crate::io::MmapReader::open(path).map_err(|e| DiskError::io(path, 0, e))?;
            return Ok(Box::new(map));
        }
        let file = FileReader::open(path).map_err(|e| DiskError::io(path, 0, e))?;
        Ok(Box::new(file))
    }

    fn open_one(&self, path: &Path) -> Result<Layer> {
        let reader = self.reader(path)?;
        self.open_layer(Source::new(reader, path.to_path_buf()))
    }

    /// Sniffs the format from the signatures and opens one image.
    fn open_layer(&self, source: Source) -> Result<Layer> {
        match sniff(&source)? {
            ImageFormat::Vhdx => Ok(Layer::Vhdx(Box::new(VhdxImage::open(source, self)?))),
            _ => Ok(Layer::Vhd(Box::new(VhdImage::open(source, self)?))),
        }
    }

    /// Follows parent links from `top` down, checking each parent's identity.
    fn with_parents(&self, top: Layer) -> Result<Disk> {
        let mut layers = vec![top];
        let mut seen: HashSet<PathBuf> = HashSet::new();
        if let Ok(p) = layers[0].info().path.canonicalize() {
            seen.insert(p);
        }
        let parents = if self.open_parents { self.max_depth } else { 0 };
        for _ in 0..parents {
            let child = &layers[layers.len() - 1];
            let Some(link) = child.info().parent.clone() else { break };
            let child_path = child.info().path.clone();
            if layers.len() >= self.max_depth {
                return Err(DiskError::BadChain {
                    child: child_path,
                    reason: format!("is deeper than {} images", self.max_depth),
                });
            }
            let (parent_path, parent) = self.find_parent(&child_path, &link)?;
            check_compatible(child, &parent, &child_path, &parent_path)?;
            let canonical = parent_path.canonicalize().unwrap_or_else(|_| parent_path.clone());
            if !seen.insert(canonical) {
                return Err(DiskError::BadChain {
                    child: child_path,
                    reason: format!("loops: {} appears twice", parent_path.display()),
                });
            }
            let last = layers.len() - 1;
            if let Some(link) = layers[last].info_mut().parent.as_mut() {
                link.resolved = Some(parent_path);
            }
            layers.push(parent);
        }
        Ok(Disk::from_layers(layers))
    }

    fn find_parent(&self, child: &Path, link: &ParentLink) -> Result<(PathBuf, Layer)> {
        let mut candidates = self.resolver.candidates(child, link);
        if self.confine_parents {
            // A network path is never inside the child's folder unless the
            // child is on the network too: refused before `canonicalize`
            // would connect to whatever server a hostile locator names.
            let on_network = |p: &Path| p.to_str().is_some_and(|s| s.starts_with("\\\\") || s.starts_with("//"));
            if !on_network(child) {
                candidates.retain(|c| !on_network(c));
            }
            let dir = child.parent().and_then(|d| d.canonicalize().ok());
            candidates.retain(|c| {
                let real = c.canonicalize().ok();
                dir.is_some() && real.and_then(|r| r.parent().map(Path::to_path_buf)) == dir
            });
        }
        let mut tried = Vec::new();
        let mut mismatched = Vec::new();
        let mut open_error = None;
        for candidate in candidates {
            if !candidate.is_file() {
                tried.push(candidate);
                continue;
            }
            match self.open_one(&candidate) {
                Ok(layer) => {
                    let id = layer.info().identity;
                    if id == link.expected_identity || Some(id) == link.alternate_identity {
                        return Ok((candidate, layer));
                    }
                    mismatched.push((candidate, id));
                }
                Err(e) => {
                    tried.push(candidate);
                    open_error.get_or_insert(e);
                }
            }
        }
        if !mismatched.is_empty() {
            return Err(DiskError::ParentMismatch {
                child: child.to_path_buf(),
                expected: link.expected_identity,
                alternate: link.alternate_identity,
                found: mismatched,
            });
        }
        if let Some(e) = open_error {
            return Err(e);
        }
        Err(DiskError::ParentNotFound { child: child.to_path_buf(), tried })
    }
}

/// A child and its parent must be the same format, and VHDX ones must share
/// the logical sector size (their bitmaps count the same sectors).
fn check_compatible(child: &Layer, parent: &Layer, child_path: &Path, parent_path: &Path) -> Result<()> {
    let (c, p) = (child.info(), parent.info());
    let reason = if c.format != p.format {
        Some(format!("a {:?} child needs a {:?} parent, not {:?}", c.format, c.format, p.format))
    } else if c.logical_sector_size != p.logical_sector_size {
        Some(format!(
            "the child has {}-byte sectors and the parent {}-byte ones",
            c.logical_sector_size, p.logical_sector_size
        ))
    } else {
        None
    };
    match reason {
        Some(reason) => Err(DiskError::ParentIncompatible {
            child: child_path.to_path_buf(),
            parent: parent_path.to_path_buf(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Tells VHDX (`vhdxfile` at 0), dynamic VHD (`conectix` at 0) and fixed VHD
/// (`conectix` in the last 512 or 511 bytes) apart.
///
/// A fixed VHD's data is a guest disk, which may itself begin with an
/// image's signature; so a sound fixed-VHD footer whose data area is exactly
/// the rest of the file wins over a signature at offset 0.
fn sniff(source: &Source) -> Result<ImageFormat> {
    let size = source.size();
    if size >= 1024 {
        let mut tail = [0u8; 512];
        source.read_exact(&mut tail, size - 512)?;
        if let Ok(f) = <crate::format::vhd::Footer as crate::format::Structure>::decode(&tail, size - 512)
            && crate::format::vhd::verify_footer_checksum(&tail, size - 512).is_ok()
            && f.disk_type == crate::format::vhd::DiskType::Fixed.code()
            && f.current_size == size - 512
        {
            return Ok(ImageFormat::Vhd);
        }
    }
    let mut head = [0u8; 8];
    if size >= 8 {
        source.read_exact(&mut head, 0)?;
        if &head == b"vhdxfile" {
            return Ok(ImageFormat::Vhdx);
        }
        if &head == b"conectix" {
            return Ok(ImageFormat::Vhd);
        }
    }
    for tail in [512u64, 511] {
        if size >= tail {
            let mut cookie = [0u8; 8];
            source.read_exact(&mut cookie, size - tail)?;
            if &cookie == b"conectix" {
                return Ok(ImageFormat::Vhd);
            }
        }
    }
    Err(DiskError::UnknownFormat {
        path: source.path().to_path_buf(),
        reason: format!(
            "no `vhdxfile` or `conectix` signature at the start, and no VHD footer at the end of the {size}-byte file"
        ),
    })
}

impl Disk {
    /// Opens `path` with default options (see [`OpenOptions`]).
    pub fn open(path: impl AsRef<Path>) -> Result<Disk> {
        open(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::ParentHint;
    use crate::format::Guid;

    fn link(hints: &[(HintKind, &str)]) -> ParentLink {
        ParentLink {
            expected_identity: Guid::NIL,
            alternate_identity: None,
            hints: hints.iter().map(|(k, p)| ParentHint { kind: *k, path: p.to_string() }).collect(),
            resolved: None,
        }
    }

    #[test]
    fn default_resolver_orders_and_maps_windows_paths() {
        let l = link(&[
            (HintKind::Relative, ".\\fat-parent.vhd"),
            (HintKind::Volume, "\\\\?\\Volume{1234}\\vms\\p.vhdx"),
            (HintKind::Absolute, "C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd"),
            (HintKind::Name, "base.vhd"),
        ]);
        let got = DefaultResolver.candidates(Path::new("/data/vm/child.vhd"), &l);
        // Elsewhere, Windows paths are mapped; a volume path names nothing.
        #[cfg(not(windows))]
        let want = [
            "/data/vm/fat-parent.vhd",
            "C:/Projects/dfvfs/test_data/fat-parent.vhd",
            "/data/vm/base.vhd",
            "/data/vm/p.vhdx",
        ];
        // On Windows every stored path is tried as Hyper-V would, the
        // volume path included, in the order stored.
        #[cfg(windows)]
        let want = [
            "/data/vm/fat-parent.vhd",
            "\\\\?\\Volume{1234}\\vms\\p.vhdx",
            "C:\\Projects\\dfvfs\\test_data\\fat-parent.vhd",
            "/data/vm/base.vhd",
            "/data/vm/p.vhdx",
        ];
        assert_eq!(got, want.iter().map(PathBuf::from).collect::<Vec<_>>());
    }

    #[test]
    fn a_parent_renamed_in_case_is_found() {
        let dir = std::env::temp_dir().join(format!("vhdkit-case-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("Base.VHDX"), b"x").unwrap();
        let l = link(&[(HintKind::Relative, ".\\base.vhdx")]);
        let got = DefaultResolver.candidates(&dir.join("child.avhdx"), &l);
        std::fs::remove_dir_all(&dir).unwrap();
        // Found by its name on a case-sensitive file system; on a
        // case-insensitive one (Windows) the stored name opens it as is.
        let found = got.iter().any(|p| p.file_name() == Some(std::ffi::OsStr::new("Base.VHDX")));
        assert!(found || cfg!(windows) || cfg!(target_os = "macos"), "{got:?}");
    }

    #[test]
    fn relative_paths_may_climb() {
        let l = link(&[(HintKind::Relative, "..\\base\\parent.vhdx")]);
        let got = DefaultResolver.candidates(Path::new("/vms/child/c.avhdx"), &l);
        assert_eq!(got[0], PathBuf::from("/vms/child/../base/parent.vhdx"));
    }
}
