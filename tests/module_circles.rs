//! The layout's contract: data flows one way (no module of `src/` imports one that imports it
//! back, directly or through others) and no file of `src/` is over 900 lines. A folder's
//! `mod.rs` and its direct children may use each other; unit tests (`#[cfg(test)] mod tests`)
//! may reach anywhere. The same rules as `../shared/tools/module-circles.py`, in the repository
//! so that CI holds them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

const MAX_LINES: usize = 900;

/// Module path of a file under `root` (`sources/mod.rs` → `sources`, `lib.rs` → ``).
fn module_of(root: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(root).unwrap().with_extension("");
    let mut parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    if parts == ["lib"] || parts == ["main"] {
        parts.clear();
    }
    parts.join("::")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The longest known module a `crate::` path names.
fn resolve<'a>(known: &'a BTreeSet<String>, path: &str) -> Option<&'a String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len())
        .rev()
        .find_map(|i| known.get(&parts[..i].join("::")))
}

/// Whether `a` and `b` are a folder's `mod.rs` and one of its direct children.
fn family(a: &str, b: &str) -> bool {
    let depth = |m: &str| m.matches("::").count();
    (a.starts_with(&format!("{b}::")) && depth(a) == depth(b) + 1)
        || (b.starts_with(&format!("{a}::")) && depth(b) == depth(a) + 1)
}

/// Every `crate::a::b` path in `text` (brace groups after `use crate::` included), outside
/// unit tests.
fn crate_paths(text: &str) -> Vec<String> {
    let text = match text.find("#[cfg(test)]\nmod tests {") {
        Some(i) => &text[..i],
        None => text,
    };
    let mut out = Vec::new();
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == ':';
    for (i, _) in text.match_indices("crate::") {
        let rest = &text[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for name in group[..end].split(|c: char| c == ',' || c.is_whitespace()) {
                let name: String = name.chars().take_while(|c| ident(*c)).collect();
                if !name.is_empty() {
                    out.push(name);
                }
            }
        } else {
            let path: String = rest.chars().take_while(|c| ident(*c)).collect();
            out.push(path.trim_end_matches(':').to_string());
        }
    }
    out
}

/// Import edges between the modules of `files` (module, text).
fn edges(files: &[(String, String)]) -> BTreeMap<String, BTreeSet<String>> {
    let known: BTreeSet<String> = files.iter().map(|(m, _)| m.clone()).collect();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (m, text) in files {
        let e = edges.entry(m.clone()).or_default();
        if m.is_empty() {
            continue;
        }
        for p in crate_paths(text) {
            if let Some(to) = resolve(&known, &p) {
                if to != m && !family(m, to) {
                    e.insert(to.clone());
                }
            }
        }
    }
    edges
}

/// Strongly connected components with more than one module (Tarjan).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.edges.get(v) {
            for w in ws {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let lw = t.low[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(lw);
                } else if t.on.contains(w) {
                    let iw = t.index[w];
                    let lv = t.low.get_mut(v).unwrap();
                    *lv = (*lv).min(iw);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_module_imports_one_that_imports_it_back_and_no_file_is_over_900_lines() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&root, &mut paths);
    let mut files = Vec::new();
    let mut big = Vec::new();
    for p in &paths {
        let text = std::fs::read_to_string(p).unwrap();
        let lines = text.matches('\n').count();
        if lines > MAX_LINES {
            big.push(format!("{} ({lines} lines)", p.display()));
        }
        files.push((module_of(&root, p), text));
    }
    assert!(files.len() > 30, "found {} files", files.len());
    let found = circles(&edges(&files));
    assert!(found.is_empty(), "import circles: {found:?}");
    assert!(big.is_empty(), "files over {MAX_LINES} lines: {big:?}");
}

/// The check is not vacuous: a circle through three modules, and one through a `use` group,
/// are found; a folder's `mod.rs` and its child using each other are not a circle.
#[test]
fn the_check_finds_a_circle_when_there_is_one() {
    let f = |m: &str, t: &str| (m.to_string(), t.to_string());
    let files = vec![
        f("", ""),
        f("a", "use crate::b::X;"),
        f("b", "fn f() { crate::c::g() }"),
        f("c", "use crate::{a, model};"),
        f("model", ""),
        f("sources", "use crate::sources::sql::Rows;"),
        f("sources::sql", "use crate::sources::Fetched;"),
        f("d", "#[cfg(test)]\nmod tests {\n use crate::e; }"),
        f("e", "use crate::d;"),
    ];
    assert_eq!(circles(&edges(&files)), [vec!["a", "b", "c"]]);
}
