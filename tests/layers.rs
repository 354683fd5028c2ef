//! The workspace's layers, as written in the root `Cargo.toml` (`[workspace.metadata.layers]`),
//! hold: every crate depends only on the workspace crates its rule lists and on none of the
//! outside crates it must never use; the sans-IO core forbids `unsafe`, never names a clock, a
//! socket, a thread, the file system, DPDK or tokio in its source, and keeps every file under
//! its line limit. Read from `cargo metadata`, so a rule cannot drift from the manifests.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

fn metadata() -> Value {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let o = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        o.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("cargo metadata prints JSON")
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source without comments (a doc may name what the code never uses).
fn code_of(text: &str) -> String {
    text.lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn every_crate_keeps_to_its_layer() {
    let m = metadata();
    let rules = &m["metadata"]["layers"];
    assert!(
        rules.is_object(),
        "no [workspace.metadata.layers] in the root Cargo.toml"
    );
    let members: Vec<&Value> = m["packages"].as_array().unwrap().iter().collect();
    let names: Vec<String> = members
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_owned())
        .collect();
    let mut problems = Vec::new();
    let mut checked = BTreeMap::new();
    for p in &members {
        let name = p["name"].as_str().unwrap();
        let rule = &rules[name];
        if !rule.is_object() {
            problems.push(format!("{name}: no rule in [workspace.metadata.layers]"));
            continue;
        }
        let uses = strings(&rule["uses"]);
        let never = strings(&rule["never"]);
        for d in p["dependencies"].as_array().unwrap() {
            // Normal and build dependencies (a test's dev-dependencies do not ship).
            if d["kind"].as_str() == Some("dev") {
                continue;
            }
            let dep = d["name"].as_str().unwrap();
            if names.iter().any(|n| n == dep) && !uses.iter().any(|u| u == dep) {
                problems.push(format!("{name} depends on {dep}, its rule allows {uses:?}"));
            }
            if never.iter().any(|n| n == dep) {
                problems.push(format!("{name} depends on {dep}, which its rule forbids"));
            }
        }
        checked.insert(name.to_owned(), uses.len());
        let src = Path::new(p["manifest_path"].as_str().unwrap())
            .parent()
            .unwrap()
            .join("src");
        let forbidden = strings(&rule["never-in-source"]);
        let max_lines = rule["max-file-lines"].as_u64();
        if rule["forbid-unsafe"].as_bool() == Some(true) {
            let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
            if !lib.contains("#![forbid(unsafe_code)]") {
                problems.push(format!("{name}: lib.rs must say #![forbid(unsafe_code)]"));
            }
        }
        if forbidden.is_empty() && max_lines.is_none() {
            continue;
        }
        let mut files = Vec::new();
        rust_files(&src, &mut files);
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap();
            let code = code_of(&text);
            for w in &forbidden {
                if code.contains(w.as_str()) {
                    problems.push(format!("{}: names `{w}`", f.display()));
                }
            }
            if let Some(max) = max_lines {
                let n = text.lines().count() as u64;
                if n > max {
                    problems.push(format!("{}: {n} lines, the limit is {max}", f.display()));
                }
            }
        }
    }
    assert!(
        problems.is_empty(),
        "layer rules broken:\n  {}",
        problems.join("\n  ")
    );
    assert!(
        checked.contains_key("tsmp-core") && checked.len() >= 8,
        "{checked:?}"
    );
}
