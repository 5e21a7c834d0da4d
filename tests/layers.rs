//! The module layers stay one-way: every `crate::<module>` path in `src/` must point to a
//! module of a lower layer (the table below, the same as `src/lib.rs`'s module map).
//! A failure names each offending file:line and every import cycle among the modules.
//!
//! Run on its own: `cargo test --test layers`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Bottom to top. A module may import only modules of lower layers; modules of one
/// layer are independent of each other. A new module goes into this table.
const LAYERS: &[&[&str]] = &[
    // leaves: no crate imports
    &["body", "yaml", "path", "router", "ipset", "watchdog"],
    &["error", "mcp", "idle_timeout", "entities", "tls"],
    &["metrics", "limits", "consumers", "upstream", "jwks"],
    // the per-request context plugins and Lua share
    &["access_log", "context"],
    &["lua"],
    &["plugins"],
    // config (with the compiled `snapshot`) holds compiled plugins
    &["config"],
    &["proxy", "explain"],
    &["dashboard"],
    &["server", "reload"],
    &["cli", "fuzz_api"],
];

/// Paths `src/lib.rs` re-exports from inside a module, counted as that module.
const ALIASES: &[(&str, &str)] = &[("snapshot", "config"), ("cors", "plugins")];

/// One `crate::<module>` reference: the importing module, its file and line, the target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Import {
    from: String,
    to: String,
    file: String,
    line: usize,
}

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a source file belongs to (`src/config/decode.rs` → `config`);
/// None for the crate roots.
fn module_of(rel: &Path) -> Option<String> {
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (name != "lib" && name != "main").then(|| name.to_string())
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The modules a line names through `crate::` (`crate::a::b`, `crate::{a, b::c}`).
fn crate_paths(line: &str) -> Vec<String> {
    let code = match line.trim_start() {
        l if l.starts_with("//") => return Vec::new(),
        _ => line,
    };
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let preceded_by_ident = rest[..i].chars().next_back().is_some_and(is_ident);
        rest = &rest[i + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name: String = item.trim().chars().take_while(|&c| is_ident(c)).collect();
                if !name.is_empty() && name != "self" {
                    out.push(name);
                }
            }
        } else {
            let name: String = rest.chars().take_while(|&c| is_ident(c)).collect();
            if !name.is_empty() {
                out.push(name);
            }
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("read {}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every cross-module `crate::` reference of the sources under `src`.
fn imports(src: &Path) -> Vec<Import> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for path in files {
        let rel = path.strip_prefix(src).expect("under src");
        let Some(from) = module_of(rel) else { continue };
        let text = std::fs::read_to_string(&path).expect("read source");
        for (n, line) in text.lines().enumerate() {
            for to in crate_paths(line) {
                let to = ALIASES
                    .iter()
                    .find(|(alias, _)| *alias == to)
                    .map_or(to.clone(), |(_, module)| module.to_string());
                if to != from {
                    out.push(Import {
                        from: from.clone(),
                        to,
                        file: format!("src/{}", rel.display()),
                        line: n + 1,
                    });
                }
            }
        }
    }
    out
}

/// The cycles of the module graph (its strongly connected components of two or more
/// modules), each as a path `a -> b -> … -> a` through edges that exist.
fn cycles(imports: &[Import]) -> Vec<String> {
    let mut graph: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for i in imports {
        graph.entry(&i.from).or_default().insert(&i.to);
        graph.entry(&i.to).or_default();
    }
    let reaches = |from: &str, to: &str| {
        let mut seen = BTreeSet::new();
        let mut stack = vec![from];
        while let Some(n) = stack.pop() {
            if n == to {
                return true;
            }
            if seen.insert(n) {
                stack.extend(graph[n].iter().copied());
            }
        }
        false
    };
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for &start in graph.keys() {
        if done.contains(start) {
            continue;
        }
        let component: Vec<&str> = graph
            .keys()
            .copied()
            .filter(|&m| reaches(start, m) && reaches(m, start))
            .collect();
        done.extend(component.iter().copied());
        if component.len() < 2 {
            continue;
        }
        // A shortest path back to `start` through the component (breadth first).
        let mut prev: BTreeMap<&str, &str> = BTreeMap::new();
        let mut queue = std::collections::VecDeque::from([start]);
        let mut last = start;
        'search: while let Some(n) = queue.pop_front() {
            for &m in &graph[n] {
                if !component.contains(&m) {
                    continue;
                }
                if m == start {
                    last = n;
                    break 'search;
                }
                if let std::collections::btree_map::Entry::Vacant(e) = prev.entry(m) {
                    e.insert(n);
                    queue.push_back(m);
                }
            }
        }
        // `last -> start` closes the cycle; walk back from `last` to `start`.
        let mut path = vec![start, last];
        while let Some(&p) = prev.get(path[path.len() - 1]) {
            path.push(p);
        }
        path.reverse();
        out.push(format!(
            "cycle among {{{}}}: {}",
            component.join(", "),
            path.join(" -> ")
        ));
    }
    out
}

/// Everything wrong with `imports`: unknown modules, upward or sideways imports, cycles.
fn problems(imports: &[Import]) -> Vec<String> {
    let mut out = Vec::new();
    let mut unknown = BTreeSet::new();
    for i in imports {
        for m in [&i.from, &i.to] {
            if layer_of(m).is_none() && unknown.insert(m.clone()) {
                out.push(format!(
                    "module `{m}` ({}:{}) is in no layer: add it to LAYERS in tests/layers.rs and to src/lib.rs's module map",
                    i.file, i.line
                ));
            }
        }
        if let (Some(a), Some(b)) = (layer_of(&i.from), layer_of(&i.to))
            && b >= a
        {
            out.push(format!(
                "{}:{}: `{}` (layer {a}) imports `{}` (layer {b}); imports must point down",
                i.file, i.line, i.from, i.to
            ));
        }
    }
    out.extend(cycles(imports));
    out
}

#[test]
fn module_imports_point_down_and_form_no_cycle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let found = imports(&src);
    assert!(
        found.len() > 50,
        "only {} crate:: imports found under {}: is the parser broken?",
        found.len(),
        src.display()
    );
    let problems = problems(&found);
    assert!(
        problems.is_empty(),
        "module layers broken:\n{}",
        problems.join("\n")
    );
}

#[test]
fn the_check_names_upward_imports_and_cycles() {
    let imp = |from: &str, to: &str, line| Import {
        from: from.into(),
        to: to.into(),
        file: format!("src/{from}.rs"),
        line,
    };
    assert_eq!(
        crate_paths("use crate::{body::Body, error, self};"),
        ["body", "error"]
    );
    assert_eq!(
        crate_paths("    x: crate::proxy::Listener, y: other_crate::no"),
        ["proxy"]
    );
    assert!(crate_paths("  //! see `crate::proxy`").is_empty());
    assert_eq!(
        module_of(Path::new("config/decode.rs")).as_deref(),
        Some("config")
    );
    assert_eq!(module_of(Path::new("lib.rs")), None);

    let bad = [
        imp("jwks", "proxy", 7),
        imp("proxy", "plugins", 3),
        imp("plugins", "jwks", 9),
        imp("plugins", "newthing", 1),
    ];
    let p = problems(&bad);
    assert!(
        p.iter().any(|l| l
            == "src/jwks.rs:7: `jwks` (layer 2) imports `proxy` (layer 7); imports must point down"),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l == "cycle among {jwks, plugins, proxy}: jwks -> proxy -> plugins -> jwks"),
        "{p:#?}"
    );
    assert!(
        p.iter()
            .any(|l| l.starts_with("module `newthing` (src/plugins.rs:1) is in no layer")),
        "{p:#?}"
    );
    assert!(problems(&[imp("proxy", "plugins", 3), imp("plugins", "jwks", 9)]).is_empty());
}
