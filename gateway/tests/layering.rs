//! The module layering of the workspace's library crates: no import circles
//! between their files.
//!
//! The checker reads every file of a crate as Rust tokens, follows the
//! crate-internal paths it names (`use crate::…`, `super::…`, `self::…`, a
//! child module's name, also inside macro calls), and maps each to the file
//! that holds the module it names. Files that import each other, directly or
//! through others, form a strongly connected component: a circle.
//!
//! One kind of loop is not a circle: a file naming a module it is *inside
//! of* (a child using its parent's `mod.rs` or the crate root, where a
//! directory module keeps what its children share) is how Rust modules
//! nest, so edges to a file's own ancestors are left out. Every other loop
//! is a circle, whether its files sit in one directory or not: two files
//! that need each other are one job split badly, or share something that
//! belongs in a third, lower file.
//!
//! Run with `--nocapture` to see each crate's circles with the imports that
//! close them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use proc_macro2::{Delimiter, Group, TokenStream, TokenTree};

/// Circles known and left to another branch. Each entry is the set of
/// files (relative to the workspace root) of one circle, and why it is
/// still here. An entry whose circle is gone fails the test, so the list
/// only shrinks.
const ALLOWED: &[(&[&str], &str)] = &[];

#[test]
fn no_import_circles_between_files() {
    let root = workspace_root();
    let mut found: Vec<Circle> = Vec::new();
    for krate in library_crates(&root) {
        let graph = Graph::of_crate(&root, &krate);
        for scc in graph.circles() {
            eprintln!("{}", graph.describe(&scc));
            found.push(Circle {
                files: scc.iter().map(|f| f.display().to_string()).collect(),
                text: graph.describe(&scc),
            });
        }
    }
    let allowed: Vec<BTreeSet<String>> = ALLOWED
        .iter()
        .map(|(files, _)| files.iter().map(|f| f.to_string()).collect())
        .collect();
    let new: Vec<&Circle> = found
        .iter()
        .filter(|c| !allowed.contains(&c.files))
        .collect();
    let gone: Vec<&(&[&str], &str)> = ALLOWED
        .iter()
        .zip(&allowed)
        .filter(|(_, a)| !found.iter().any(|c| &c.files == *a))
        .map(|(entry, _)| entry)
        .collect();
    let mut problems = String::new();
    for c in &new {
        problems.push_str(&format!(
            "import circle (move what both need into a lower file):\n{}\n",
            c.text
        ));
    }
    for (files, why) in &gone {
        problems.push_str(&format!(
            "the allowed circle {files:?} ({why}) is gone: remove it from ALLOWED in {}\n",
            file!()
        ));
    }
    assert!(problems.is_empty(), "{problems}");
}

/// The checker itself, on a small crate written for it: it must see a
/// circle through `use crate::…`, `super::…`, a path inside a macro call
/// and a child module named from its parent, and must not count a child
/// using its parent or test code using what it tests.
#[test]
fn the_checker_sees_circles_of_every_kind_of_path() {
    let dir = tempfile::tempdir().unwrap();
    let w = |rel: &str, text: &str| {
        let p = dir.path().join("k/src").join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    w(
        "lib.rs",
        "pub mod a; pub mod b; pub mod c; pub mod d; pub mod sub; pub struct Root; pub use a::A;",
    );
    // c -> d, and d's tests use c: test code makes no circle.
    w("c.rs", "use crate::d::D; pub struct C(D);");
    w(
        "d.rs",
        "pub struct D; #[cfg(test)] mod tests { use crate::c::C; }",
    );
    // a -> b by `use crate::`, b -> a by a path in a macro call.
    w("a.rs", "use crate::b::B; pub struct A(B);");
    w(
        "b.rs",
        "pub struct B; fn f() { println!(\"{:?}\", crate::a::A(B)); }",
    );
    // sub/mod.rs -> sub/x.rs by a child name, sub/x.rs -> sub/y.rs by
    // `super::`, sub/y.rs -> sub/x.rs by a type path; x and y also use
    // their parent and the root, which is no circle.
    w(
        "sub/mod.rs",
        "mod x; mod y; pub struct Shared; fn g() -> x::X { x::X }",
    );
    w(
        "sub/x.rs",
        "use super::y; pub struct X; fn h(_: y::Y, _: super::Shared, _: crate::Root) {}",
    );
    w("sub/y.rs", "pub struct Y; fn i(_: super::x::X) {}");
    let krate = Crate {
        lib: PathBuf::from("k/src/lib.rs"),
    };
    let graph = Graph::of_crate(dir.path(), &krate);
    let circles: Vec<Vec<String>> = graph
        .circles()
        .iter()
        .map(|c| c.iter().map(|f| f.display().to_string()).collect())
        .collect();
    assert_eq!(
        circles,
        vec![
            vec!["k/src/a.rs".to_string(), "k/src/b.rs".to_string()],
            vec!["k/src/sub/x.rs".to_string(), "k/src/sub/y.rs".to_string()],
        ],
        "{}",
        graph.dump()
    );
}

struct Circle {
    files: BTreeSet<String>,
    text: String,
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the gateway crate sits in the workspace")
        .to_path_buf()
}

/// A crate target: its root file, relative to the workspace root.
struct Crate {
    lib: PathBuf,
}

/// The library and binary targets of the workspace's members.
fn library_crates(root: &Path) -> Vec<Crate> {
    let text = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let manifest: toml::Table = toml::from_str(&text).unwrap();
    let members = manifest["workspace"]["members"]
        .as_array()
        .expect("[workspace] members is a list");
    let mut crates = Vec::new();
    for m in members {
        let dir = PathBuf::from(m.as_str().unwrap());
        let own: toml::Table =
            toml::from_str(&std::fs::read_to_string(root.join(&dir).join("Cargo.toml")).unwrap())
                .unwrap();
        let lib = own
            .get("lib")
            .and_then(|l| l.get("path"))
            .and_then(|p| p.as_str())
            .unwrap_or("src/lib.rs");
        if root.join(&dir).join(lib).exists() {
            crates.push(Crate { lib: dir.join(lib) });
        }
        let mut bins: BTreeSet<PathBuf> = own
            .get("bin")
            .and_then(|b| b.as_array())
            .into_iter()
            .flatten()
            .filter_map(|b| b.get("path").and_then(|p| p.as_str()))
            .map(|p| dir.join(p))
            .collect();
        if root.join(&dir).join("src/main.rs").exists() {
            bins.insert(dir.join("src/main.rs"));
        }
        if let Ok(entries) = std::fs::read_dir(root.join(&dir).join("src/bin")) {
            for e in entries.flatten() {
                let p = e.path();
                if p.extension().is_some_and(|x| x == "rs") {
                    bins.insert(dir.join("src/bin").join(e.file_name()));
                } else if p.join("main.rs").exists() {
                    bins.insert(dir.join("src/bin").join(e.file_name()).join("main.rs"));
                }
            }
        }
        crates.extend(bins.into_iter().map(|lib| Crate { lib }));
    }
    crates
}

/// A module: the file that holds it and its child modules' names.
#[derive(Default)]
struct Module {
    file: PathBuf,
    children: BTreeSet<String>,
}

/// A crate-internal path as written: in which module, which segments.
struct Reference {
    file: PathBuf,
    module: Vec<String>,
    segments: Vec<String>,
}

/// The files of one crate and which import which.
struct Graph {
    /// File -> files it imports, with one path that shows each edge.
    edges: BTreeMap<PathBuf, BTreeMap<PathBuf, String>>,
    /// File -> the files of the modules it is inside of.
    ancestors: BTreeMap<PathBuf, BTreeSet<PathBuf>>,
}

impl Graph {
    fn of_crate(root: &Path, krate: &Crate) -> Graph {
        let mut modules: BTreeMap<Vec<String>, Module> = BTreeMap::new();
        let mut refs: Vec<Reference> = Vec::new();
        let lib_dir = krate.lib.parent().unwrap().to_path_buf();
        load_file(
            root,
            &krate.lib,
            Vec::new(),
            lib_dir,
            &mut modules,
            &mut refs,
        );
        let mut edges: BTreeMap<PathBuf, BTreeMap<PathBuf, String>> = BTreeMap::new();
        let mut ancestors: BTreeMap<PathBuf, BTreeSet<PathBuf>> = BTreeMap::new();
        for (path, m) in &modules {
            edges.entry(m.file.clone()).or_default();
            let entry = ancestors.entry(m.file.clone()).or_default();
            for n in 0..path.len() {
                let f = &modules[&path[..n].to_vec()].file;
                if *f != m.file {
                    entry.insert(f.clone());
                }
            }
        }
        for r in refs {
            let Some(target) = resolve(&modules, &r.module, &r.segments) else {
                continue;
            };
            let to = modules[&target].file.clone();
            if to != r.file {
                edges
                    .entry(r.file.clone())
                    .or_default()
                    .entry(to)
                    .or_insert_with(|| r.segments.join("::"));
            }
        }
        Graph { edges, ancestors }
    }

    /// Whether the edge `from -> to` counts: not to a module `from` is in.
    fn counts(&self, from: &Path, to: &Path) -> bool {
        !self.ancestors[from].contains(to)
    }

    /// The circles: strongly connected components of more than one file,
    /// each sorted, in file order (Tarjan's algorithm).
    fn circles(&self) -> Vec<Vec<PathBuf>> {
        struct Tarjan<'g> {
            g: &'g Graph,
            index: BTreeMap<&'g Path, usize>,
            low: BTreeMap<&'g Path, usize>,
            stack: Vec<&'g Path>,
            on_stack: BTreeSet<&'g Path>,
            out: Vec<Vec<PathBuf>>,
        }
        impl<'g> Tarjan<'g> {
            fn visit(&mut self, v: &'g Path) {
                let i = self.index.len();
                self.index.insert(v, i);
                self.low.insert(v, i);
                self.stack.push(v);
                self.on_stack.insert(v);
                for w in self.g.edges[v].keys() {
                    let w = w.as_path();
                    if !self.g.counts(v, w) {
                        continue;
                    }
                    if !self.index.contains_key(w) {
                        self.visit(w);
                        let lw = self.low[w];
                        let lv = self.low.get_mut(v).unwrap();
                        *lv = (*lv).min(lw);
                    } else if self.on_stack.contains(w) {
                        let iw = self.index[w];
                        let lv = self.low.get_mut(v).unwrap();
                        *lv = (*lv).min(iw);
                    }
                }
                if self.low[v] == self.index[v] {
                    let mut scc = Vec::new();
                    loop {
                        let w = self.stack.pop().unwrap();
                        self.on_stack.remove(w);
                        scc.push(w.to_path_buf());
                        if w == v {
                            break;
                        }
                    }
                    if scc.len() > 1 {
                        scc.sort();
                        self.out.push(scc);
                    }
                }
            }
        }
        let mut t = Tarjan {
            g: self,
            index: BTreeMap::new(),
            low: BTreeMap::new(),
            stack: Vec::new(),
            on_stack: BTreeSet::new(),
            out: Vec::new(),
        };
        for v in self.edges.keys() {
            if !t.index.contains_key(v.as_path()) {
                t.visit(v);
            }
        }
        let mut out = t.out;
        out.sort();
        out
    }

    /// A circle's files and the imports between them.
    fn describe(&self, scc: &[PathBuf]) -> String {
        let mut s = String::from("circle:\n");
        for from in scc {
            for (to, path) in &self.edges[from] {
                if scc.contains(to) && self.counts(from, to) {
                    s.push_str(&format!(
                        "  {} -> {}  ({path})\n",
                        from.display(),
                        to.display()
                    ));
                }
            }
        }
        s
    }

    /// Every edge, for a failing checker test.
    fn dump(&self) -> String {
        let mut s = String::new();
        for (from, tos) in &self.edges {
            for (to, path) in tos {
                s.push_str(&format!(
                    "{} -> {} ({path}){}\n",
                    from.display(),
                    to.display(),
                    if self.counts(from, to) {
                        ""
                    } else {
                        " [ancestor]"
                    }
                ));
            }
        }
        s
    }
}

/// The module `segments` names from inside `module`, as deep as the crate
/// has modules on that path; `None` for a path that leaves the crate or
/// names no module of it.
fn resolve(
    modules: &BTreeMap<Vec<String>, Module>,
    module: &[String],
    segments: &[String],
) -> Option<Vec<String>> {
    let (mut at, rest): (Vec<String>, &[String]) = match segments.first()?.as_str() {
        "crate" => (Vec::new(), &segments[1..]),
        "self" => (module.to_vec(), &segments[1..]),
        "super" => {
            let ups = segments.iter().take_while(|s| *s == "super").count();
            let keep = module.len().checked_sub(ups)?;
            (module[..keep].to_vec(), &segments[ups..])
        }
        first if segments.len() > 1 && modules.get(module)?.children.contains(first) => {
            (module.to_vec(), segments)
        }
        _ => return None,
    };
    for s in rest {
        if s == "self" {
            continue;
        }
        if !modules.get(&at)?.children.contains(s) {
            break;
        }
        at.push(s.clone());
    }
    Some(at)
}

/// Parses `file` (module `path`, whose out-of-line children live in
/// `child_dir`), records its modules and the paths it names, and loads its
/// out-of-line child modules.
fn load_file(
    root: &Path,
    file: &Path,
    path: Vec<String>,
    child_dir: PathBuf,
    modules: &mut BTreeMap<Vec<String>, Module>,
    refs: &mut Vec<Reference>,
) {
    let text = std::fs::read_to_string(root.join(file))
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
    let tokens: TokenStream = text
        .parse()
        .unwrap_or_else(|e| panic!("cannot tokenize {}: {e:?}", file.display()));
    let mut s = Scanner {
        root: root.to_path_buf(),
        file: file.to_path_buf(),
        modules: BTreeMap::new(),
        outlines: Vec::new(),
        refs: Vec::new(),
    };
    s.modules.insert(path.clone(), BTreeSet::new());
    s.scan(tokens, &path, &child_dir);
    for (p, children) in s.modules {
        let m = modules.entry(p).or_default();
        m.file = file.to_path_buf();
        m.children.extend(children);
    }
    refs.extend(s.refs);
    for (child_path, child_file) in s.outlines {
        let dir = if child_file.file_name().is_some_and(|n| n == "mod.rs") {
            child_file.parent().unwrap().to_path_buf()
        } else {
            child_file.with_extension("")
        };
        load_file(root, &child_file, child_path, dir, modules, refs);
    }
}

/// Reads one file's tokens (comments and string literals are already
/// gone, so only code counts). A token scan is enough for what the checker
/// needs: `mod` items, `use` trees and `a::b` paths have fixed shapes.
struct Scanner {
    root: PathBuf,
    file: PathBuf,
    /// Modules of this file (its own, plus inline `mod x { }`s) and their
    /// children's names.
    modules: BTreeMap<Vec<String>, BTreeSet<String>>,
    /// Out-of-line child modules: module path, file.
    outlines: Vec<(Vec<String>, PathBuf)>,
    refs: Vec<Reference>,
}

fn is_punct(t: Option<&TokenTree>, c: char) -> bool {
    matches!(t, Some(TokenTree::Punct(p)) if p.as_char() == c)
}

/// Whether `tts[i..]` starts with `::`.
fn is_colons(tts: &[TokenTree], i: usize) -> bool {
    is_punct(tts.get(i), ':') && is_punct(tts.get(i + 1), ':')
}

/// Whether an attribute body is `cfg(test)`.
fn is_cfg_test(body: &Group) -> bool {
    let tts: Vec<TokenTree> = body.stream().into_iter().collect();
    match tts.as_slice() {
        [TokenTree::Ident(k), TokenTree::Group(args)] if k == "cfg" => {
            args.stream().to_string().trim() == "test"
        }
        _ => false,
    }
}

/// The value of a `path = "…"` attribute body.
fn path_attr(body: &Group) -> Option<String> {
    let tts: Vec<TokenTree> = body.stream().into_iter().collect();
    match tts.as_slice() {
        [TokenTree::Ident(k), TokenTree::Punct(eq), TokenTree::Literal(lit)]
            if k == "path" && eq.as_char() == '=' =>
        {
            Some(lit.to_string().trim_matches('"').to_string())
        }
        _ => None,
    }
}

/// The index after the item that starts at `tts[i]` (its attributes
/// already read): after its first top-level `;` or `{ … }`.
fn item_end(tts: &[TokenTree], mut i: usize) -> usize {
    while i < tts.len() {
        match &tts[i] {
            TokenTree::Punct(p) if p.as_char() == ';' => return i + 1,
            TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => return i + 1,
            _ => i += 1,
        }
    }
    i
}

/// The paths a `use` tree (its tokens, without `use` and `;`) imports.
fn use_paths(tts: &[TokenTree], prefix: &[String], out: &mut Vec<Vec<String>>) {
    for item in tts.split(|t| is_punct(Some(t), ',')) {
        if item.is_empty() || is_colons(item, 0) {
            continue;
        }
        let mut path = prefix.to_vec();
        let mut ends_in_name = false;
        let mut i = 0;
        while i < item.len() {
            match &item[i] {
                TokenTree::Ident(id) if id == "as" => break,
                TokenTree::Ident(id) => {
                    path.push(id.to_string());
                    ends_in_name = true;
                }
                TokenTree::Group(g) if g.delimiter() == Delimiter::Brace => {
                    let inner: Vec<TokenTree> = g.stream().into_iter().collect();
                    use_paths(&inner, &path, out);
                    ends_in_name = false;
                }
                TokenTree::Punct(p) if p.as_char() == '*' => {
                    out.push(path.clone());
                    ends_in_name = false;
                }
                _ => {}
            }
            i += 1;
        }
        if ends_in_name {
            out.push(path);
        }
    }
}

impl Scanner {
    fn record(&mut self, module: &[String], segments: Vec<String>) {
        if !segments.is_empty() {
            self.refs.push(Reference {
                file: self.file.clone(),
                module: module.to_vec(),
                segments,
            });
        }
    }

    /// Scans `tokens`, which lie in `module`, whose out-of-line children
    /// live in `child_dir`.
    fn scan(&mut self, tokens: TokenStream, module: &[String], child_dir: &Path) {
        let tts: Vec<TokenTree> = tokens.into_iter().collect();
        let mut explicit_path: Option<String> = None;
        let mut i = 0;
        while i < tts.len() {
            match &tts[i] {
                // An attribute: remember a `#[path = "…"]` for the next `mod`.
                TokenTree::Punct(p) if p.as_char() == '#' => {
                    let body = if is_punct(tts.get(i + 1), '!') {
                        i + 2
                    } else {
                        i + 1
                    };
                    if let Some(TokenTree::Group(g)) = tts.get(body) {
                        if g.delimiter() == Delimiter::Bracket {
                            if let Some(p) = path_attr(g) {
                                explicit_path = Some(p);
                            }
                            i = body + 1;
                            // Test-only code (a `mod tests`) may use any
                            // file to build its fixtures: skip the item.
                            if is_cfg_test(g) && !is_punct(tts.get(i - 2), '!') {
                                i = item_end(&tts, i);
                                explicit_path = None;
                            }
                            continue;
                        }
                    }
                    i += 1;
                }
                TokenTree::Ident(kw) if kw == "mod" => {
                    let Some(TokenTree::Ident(name)) = tts.get(i + 1) else {
                        i += 1;
                        continue;
                    };
                    let name = name.to_string();
                    self.modules
                        .entry(module.to_vec())
                        .or_default()
                        .insert(name.clone());
                    let mut child = module.to_vec();
                    child.push(name.clone());
                    match tts.get(i + 2) {
                        Some(TokenTree::Group(g)) if g.delimiter() == Delimiter::Brace => {
                            self.modules.entry(child.clone()).or_default();
                            self.scan(g.stream(), &child, &child_dir.join(&name));
                        }
                        _ => {
                            let file = match explicit_path.take() {
                                Some(p) => self.file.parent().unwrap().join(p),
                                None => {
                                    let flat = child_dir.join(format!("{name}.rs"));
                                    if self.root.join(&flat).exists() {
                                        flat
                                    } else {
                                        child_dir.join(&name).join("mod.rs")
                                    }
                                }
                            };
                            self.outlines.push((child, file));
                        }
                    }
                    explicit_path = None;
                    i += 3;
                }
                TokenTree::Ident(kw) if kw == "use" => {
                    let end = (i..tts.len())
                        .find(|&j| is_punct(tts.get(j), ';'))
                        .unwrap_or(tts.len());
                    let mut paths = Vec::new();
                    use_paths(&tts[i + 1..end], &[], &mut paths);
                    for p in paths {
                        self.record(module, p);
                    }
                    i = end + 1;
                }
                TokenTree::Group(g) => {
                    if g.delimiter() == Delimiter::Brace {
                        explicit_path = None;
                    }
                    self.scan(g.stream(), module, child_dir);
                    i += 1;
                }
                // A path `a::b::c` (not the tail of a longer one).
                TokenTree::Ident(first) if i < 2 || !is_colons(&tts, i - 2) => {
                    let mut segs = vec![first.to_string()];
                    let mut j = i + 1;
                    while is_colons(&tts, j) {
                        match tts.get(j + 2) {
                            Some(TokenTree::Ident(next)) => {
                                segs.push(next.to_string());
                                j += 3;
                            }
                            _ => break,
                        }
                    }
                    if segs.len() > 1 {
                        self.record(module, segs);
                    }
                    i = j;
                }
                TokenTree::Punct(p) if p.as_char() == ';' => {
                    explicit_path = None;
                    i += 1;
                }
                _ => i += 1,
            }
        }
    }
}
