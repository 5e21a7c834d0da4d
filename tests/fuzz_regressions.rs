//! Replays every input the fuzzers found (`fuzz/regressions/<target>/`, each a crash,
//! hang or property failure that was fixed) and the minimised corpora
//! (`fuzz/corpus/<target>/`) through the same checks the fuzz targets run
//! (`portcullis::fuzz_api`). See README "Fuzzing".
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join(kind)
        .join(target);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

fn replay(target: &str, check: fn(&[u8])) {
    let regressions = inputs("regressions", target);
    let corpus = inputs("corpus", target);
    assert!(
        !corpus.is_empty(),
        "fuzz/corpus/{target}/ is empty or missing"
    );
    for file in regressions.iter().chain(&corpus) {
        let data = std::fs::read(file).unwrap();
        let name = file.display().to_string();
        if let Err(e) = std::panic::catch_unwind(|| check(&data)) {
            let msg = e
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| e.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_default();
            panic!("{name}: {msg}");
        }
    }
}

#[test]
fn config() {
    replay("config", portcullis::fuzz_api::config);
}

#[test]
fn path() {
    replay("path", portcullis::fuzz_api::path);
}

#[test]
fn router() {
    replay("router", portcullis::fuzz_api::router);
}

#[test]
fn expression() {
    replay("expression", portcullis::fuzz_api::expression);
}

#[test]
fn cors() {
    replay("cors", portcullis::fuzz_api::cors);
}

#[test]
fn real_ip() {
    replay("real_ip", portcullis::fuzz_api::real_ip);
}

#[test]
fn template() {
    replay("template", portcullis::fuzz_api::template);
}

#[test]
fn http1() {
    replay("http1", portcullis::fuzz_api::http1);
}
