//! The layout rules of docs/architecture.md, checked on the source itself,
//! so that a change that breaks one fails here instead of waiting for a
//! review:
//!
//! - no source file over 600 lines;
//! - no circle of imports between files (a folder's `mod.rs` declaring and
//!   re-exporting its children is its table of contents, not an import);
//! - inside `src/store`, imports run one way, down the layers
//!   `model → crypto → error → backend → format → state → ops → mod.rs`,
//!   and no operation in `ops/` imports another;
//! - every folder's opening comment (its `mod.rs`) says what it may import.
//!
//! The import graph is read from the text: every path that starts with
//! `crate::` or `super::` outside comments and test modules, resolved to
//! the file of the longest module prefix that exists.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 600;

/// The store's layers, bottom first.
const LAYERS: [&str; 7] = ["model", "crypto", "error", "backend", "format", "state", "ops"];

struct Source {
    /// Path below `src`, with `/`.
    rel: String,
    /// The module path, from `crate`.
    module: Vec<String>,
    text: String,
}

fn sources() -> Vec<Source> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    walk(&root, &mut files);
    files.sort();
    files
        .into_iter()
        .map(|path| {
            let rel = path.strip_prefix(&root).unwrap().to_string_lossy().replace('\\', "/");
            let mut module: Vec<String> = vec!["crate".into()];
            module.extend(rel.trim_end_matches(".rs").split('/').map(String::from));
            if module.last().is_some_and(|m| m == "mod" || m == "lib" || m == "main") {
                module.pop();
            }
            Source { rel, module, text: std::fs::read_to_string(&path).unwrap() }
        })
        .collect()
}

/// The code of a file without its test modules and comments.
fn code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") && lines.peek().is_some_and(|n| n.trim_start().starts_with("mod ")) {
            // Test modules close the file in this crate; a one-line
            // `mod tests;` declaration is skipped alone.
            if lines.peek().is_some_and(|n| n.trim_end().ends_with(';')) {
                lines.next();
                continue;
            }
            break;
        }
        let line = match line.find("//") {
            Some(i) if !line[..i].contains('"') => &line[..i],
            _ => line,
        };
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// Every module path a file's code names: `crate::a::b`, and the heads of
/// groups `crate::a::{b, c::d}`; `super::` resolved against `module`.
fn paths(code: &str, module: &[String]) -> Vec<Vec<String>> {
    let bytes = code.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let starts = code.is_char_boundary(i)
            && (code[i..].starts_with("crate::") || code[i..].starts_with("super::"))
            && (i == 0 || !(ident(bytes[i - 1]) || bytes[i - 1] == b':' || bytes[i - 1] == b'$'));
        if !starts {
            i += 1;
            continue;
        }
        let mut path: Vec<String> = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < bytes.len() && ident(bytes[j]) {
                j += 1;
            }
            path.push(code[start..j].to_string());
            if code[j..].starts_with("::") && bytes.get(j + 2).is_some_and(|&b| ident(b)) {
                j += 2;
            } else {
                break;
            }
        }
        // Resolve `super`s against this file's module.
        let supers = path.iter().take_while(|s| *s == "super").count();
        let mut full: Vec<String> = if supers > 0 {
            let keep = module.len().saturating_sub(supers);
            module[..keep].iter().cloned().chain(path[supers..].iter().cloned()).collect()
        } else {
            path
        };
        if code[j..].starts_with("::{") {
            // The first names of the group.
            let mut depth = 0;
            let mut k = j + 2;
            let mut head = true;
            let mut name = String::new();
            while k < bytes.len() {
                let b = bytes[k];
                match b {
                    b'{' => {
                        depth += 1;
                        head = depth == 1;
                    }
                    b'}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    b',' if depth == 1 => head = true,
                    _ if ident(b) && head && depth == 1 => name.push(b as char),
                    _ if !name.is_empty() => {
                        let mut p = full.clone();
                        p.push(std::mem::take(&mut name));
                        out.push(p);
                        head = false;
                    }
                    _ => {}
                }
                k += 1;
            }
            if !name.is_empty() {
                full.push(name);
            }
            out.push(full);
            i = k;
        } else {
            out.push(full);
            i = j;
        }
    }
    out
}

/// File-level imports: `rel` → the files it names.
fn graph(sources: &[Source]) -> BTreeMap<String, BTreeSet<String>> {
    let by_module: BTreeMap<Vec<String>, &str> = sources.iter().map(|s| (s.module.clone(), s.rel.as_str())).collect();
    let mut edges = BTreeMap::new();
    for s in sources {
        let mut to = BTreeSet::new();
        for p in paths(&code(&s.text), &s.module) {
            if let Some(target) = (1..=p.len()).rev().find_map(|n| by_module.get(&p[..n])) {
                // A folder's mod.rs naming its own children is its table of
                // contents; a child naming its parent is an import.
                let parent_of_target = s.module.len() < p.len() && p.starts_with(&s.module);
                if *target != s.rel && !parent_of_target {
                    to.insert(target.to_string());
                }
            }
        }
        edges.insert(s.rel.clone(), to);
    }
    edges
}

#[test]
fn no_source_file_is_over_the_line_bound() {
    let long: Vec<String> = sources()
        .iter()
        .filter(|s| s.text.lines().count() > MAX_LINES)
        .map(|s| format!("{} ({} lines)", s.rel, s.text.lines().count()))
        .collect();
    assert!(long.is_empty(), "files over {MAX_LINES} lines: {long:?}");
}

#[test]
fn no_file_imports_itself_through_others() {
    let sources = sources();
    let edges = graph(&sources);
    // A file is on a circle when it reaches itself.
    let mut circles = Vec::new();
    for start in edges.keys() {
        let mut seen = BTreeSet::new();
        let mut todo: Vec<&String> = edges[start].iter().collect();
        while let Some(n) = todo.pop() {
            if n == start {
                circles.push(start.clone());
                break;
            }
            if seen.insert(n.clone()) {
                todo.extend(edges.get(n).into_iter().flatten());
            }
        }
    }
    assert!(circles.is_empty(), "files on an import circle: {circles:?}");
}

/// The store layer of a file under `store/`, or none for the rest of the crate.
fn layer(rel: &str) -> Option<usize> {
    let rest = rel.strip_prefix("store/")?;
    let first = rest.split('/').next()?.trim_end_matches(".rs");
    Some(LAYERS.iter().position(|l| *l == first).unwrap_or(LAYERS.len()))
}

#[test]
fn store_imports_run_down_the_layers() {
    let sources = sources();
    let edges = graph(&sources);
    let mut wrong = Vec::new();
    for (from, tos) in &edges {
        let Some(lf) = layer(from) else { continue };
        for to in tos {
            let Some(lt) = layer(to) else { continue };
            if lt > lf {
                wrong.push(format!("{from} imports {to}, a layer above it"));
            }
            // One operation never reaches into another.
            let op = |r: &str| {
                r.strip_prefix("store/ops/").map(|r| r.split('/').next().unwrap().trim_end_matches(".rs").to_string())
            };
            if let (Some(a), Some(b)) = (op(from), op(to))
                && a != b
            {
                wrong.push(format!("{from} imports {to}: operations do not import each other"));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

#[test]
fn every_folder_says_what_it_may_import() {
    let missing: Vec<String> = sources()
        .iter()
        .filter(|s| s.rel.ends_with("/mod.rs"))
        .filter(|s| {
            let opening: String = s.text.lines().take_while(|l| l.starts_with("//!")).collect();
            !opening.contains("May import")
        })
        .map(|s| s.rel.clone())
        .collect();
    assert!(missing.is_empty(), "folders whose opening comment does not say what they may import: {missing:?}");
}

/// The checks themselves: a circle and an upward import are seen.
#[test]
fn the_checks_see_what_they_look_for() {
    let file = |rel: &str, text: &str| {
        let mut module: Vec<String> = vec!["crate".into()];
        module.extend(rel.trim_end_matches(".rs").split('/').map(String::from));
        if module.last().is_some_and(|m| m == "mod") {
            module.pop();
        }
        Source { rel: rel.into(), module, text: text.into() }
    };
    let sources = vec![
        file("store/mod.rs", "mod model;\nmod ops;\npub use ops::x::Y;\n"),
        file("store/model/mod.rs", "//! May import: nothing.\npub mod id;\n"),
        file("store/model/id.rs", "use crate::store::ops::x::Y; // wrong\n"),
        file("store/ops/mod.rs", "pub mod x;\n"),
        file("store/ops/x.rs", "use crate::store::{model::id::Id, Store};\nuse super::super::model::id;\n"),
    ];
    let edges = graph(&sources);
    assert!(edges["store/model/id.rs"].contains("store/ops/x.rs"));
    assert!(edges["store/ops/x.rs"].contains("store/model/id.rs"));
    assert!(edges["store/ops/x.rs"].contains("store/mod.rs"));
    assert!(!edges["store/mod.rs"].contains("store/ops/x.rs"), "a table of contents is not an import");
    assert_eq!(layer("store/model/id.rs"), Some(0));
    assert_eq!(layer("store/mod.rs"), Some(LAYERS.len()));
    // A comment or a test module names nothing.
    assert!(
        paths(&code("// crate::a::b\n#[cfg(test)]\nmod tests {\n use crate::c;\n}\n"), &["crate".into()]).is_empty()
    );
}
