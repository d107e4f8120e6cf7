//! The code map's invariants (docs/ARCHITECTURE.md) checked on the sources: the library crates
//! never print (only the CLI does, so a library's output cannot interleave with progress bars or
//! break `--json`), and segkit-models does no IO. A stray `eprintln!` left from measuring once
//! passed every other test; this is the test that fails on it.
//!
//! The check reads each library source file up to its `#[cfg(test)]` module (tests may print),
//! with comments removed, so prose that names a macro does not count.

use std::path::{Path, PathBuf};

/// What the library crates must not contain outside tests.
const PRINTING: &[&str] = &["println!", "eprintln!", "print!", "eprint!", "dbg!", "io::stdout", "io::stderr"];

/// What segkit-models must not contain outside tests besides printing: models take tensors
/// and return tensors; files are read and written by segkit-data and segkit-train.
const IO: &[&str] = &["std::fs", "fs::", "File::", "std::net", "io::Read", "io::Write", "BufReader", "BufWriter"];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Every `.rs` file under `dir`, recursively, in a stable order.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The code of a source file that ships: everything before its first `#[cfg(test)]`, with
/// `//` comments (doc comments included) cut from each line. Block comments are not used in
/// this workspace; a `//` inside a string literal would hide the rest of its line, which errs on
/// the side of a missed finding, never a false one.
fn shipped_code(text: &str) -> Vec<(usize, String)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .map(|(i, line)| (i + 1, line.split("//").next().unwrap_or("").to_string()))
        .collect()
}

/// `file:line: pattern` for every forbidden pattern in the shipped code of `text`. A pattern
/// that is a macro must not be the tail of a longer identifier (`eprintln!` contains `println!`,
/// and both are reported under their own name only).
fn findings(name: &str, text: &str, forbidden: &[&str]) -> Vec<String> {
    let mut out = Vec::new();
    for (line_no, code) in shipped_code(text) {
        for pattern in forbidden {
            let hit = code.match_indices(pattern).any(|(at, _)| {
                let before = code[..at].chars().next_back();
                !before.is_some_and(|c| c.is_alphanumeric() || c == '_')
            });
            if hit {
                out.push(format!("{name}:{line_no}: {pattern}"));
            }
        }
    }
    out
}

/// Asserts that the snippet's findings are `expected` (the scanner's own cases).
fn check(text: &str, expected: &[&str]) {
    let got = findings("f.rs", text, PRINTING);
    assert_eq!(got, expected, "snippet:\n{text}");
}

#[test]
fn the_scanner_finds_prints_in_shipped_code_only() {
    check("fn f() {\n    eprintln!(\"x\");\n}\n", &["f.rs:2: eprintln!"]);
    check("fn f() { println!(\"x\"); }\n", &["f.rs:1: println!"]);
    check("fn f() { dbg!(1); let _ = std::io::stderr(); }\n", &["f.rs:1: dbg!", "f.rs:1: io::stderr"]);
    // Comments, test modules and names that merely end alike are not findings.
    check("/// Unlike eprintln!, this returns the text.\nfn f() {} // println!(\"\")\n", &[]);
    check("fn f() {}\n#[cfg(test)]\nmod tests {\n    fn g() { eprintln!(\"ok in tests\"); }\n}\n", &[]);
    check("fn f() { my_println!(\"x\"); }\n", &[]);
}

#[test]
fn library_crates_do_not_print() {
    let mut all = Vec::new();
    for krate in ["segkit-models", "segkit-data", "segkit-train"] {
        let files = sources(&workspace().join("crates").join(krate).join("src"));
        assert!(files.len() > 5, "{krate}: found only {} source files", files.len());
        for path in files {
            let text = std::fs::read_to_string(&path).unwrap();
            all.extend(findings(&path.display().to_string(), &text, PRINTING));
        }
    }
    assert!(all.is_empty(), "only the CLI prints (docs/ARCHITECTURE.md); found:\n{}", all.join("\n"));
}

#[test]
fn models_do_no_io() {
    let files = sources(&workspace().join("crates/segkit-models/src"));
    let mut all = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).unwrap();
        all.extend(findings(&path.display().to_string(), &text, IO));
    }
    assert!(all.is_empty(), "segkit-models does no IO (docs/ARCHITECTURE.md); found:\n{}", all.join("\n"));
}
