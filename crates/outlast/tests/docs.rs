//! The contracts a user reads in `docs/` keep up with the code: every config field, every
//! metric, every API endpoint, every drill fault and expectation metric the code knows is
//! documented. Each test reads the source the contract comes from, so a field added
//! without its line in the docs fails here.

use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The text under the heading that contains `heading`, up to the next heading.
fn section<'a>(doc: &'a str, heading: &str) -> Option<&'a str> {
    let start = doc
        .match_indices('#')
        .map(|(i, _)| i)
        .filter(|i| *i == 0 || doc.as_bytes()[i - 1] == b'\n')
        .find(|i| {
            doc[*i..]
                .lines()
                .next()
                .is_some_and(|l| l.contains(heading))
        })?;
    let body = &doc[start..];
    let first_line = body.find('\n').map_or(body.len(), |i| i + 1);
    let end = body[first_line..]
        .find("\n#")
        .map_or(body.len(), |i| first_line + i + 1);
    Some(&body[..end])
}

/// Field names of `pub struct NAME { ... }` in Rust source.
fn struct_fields(src: &str, name: &str) -> Vec<String> {
    let start = src
        .find(&format!("pub struct {name} {{"))
        .unwrap_or_else(|| panic!("struct {name} not found"));
    let body = &src[start..];
    let end = body.find("\n}").expect("struct end");
    body[..end]
        .lines()
        .skip(1)
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("pub "))
        .filter_map(|l| l.split(':').next())
        .map(|f| f.trim().to_string())
        .collect()
}

#[test]
fn every_config_field_is_in_the_reference() {
    let raw = read("crates/outlast-core/src/config/raw.rs");
    let doc = read("docs/config.md");
    let tables = [
        ("RawCluster", "`[cluster]`"),
        ("RawTiming", "`[timing]`"),
        ("RawSite", "`[[sites]]`"),
        ("RawDns", "`[dns]`"),
        ("RawPush", "`[[dns.push]]`"),
        ("RawProbe", "`[[dns.probes]]`"),
        ("RawSteering", "DNS steering"),
        ("RawService", "`[[services]]`"),
        ("RawCheck", "`check`"),
        ("RawStream", "`[[streams]]`"),
        ("RawSink", "`[[streams.sinks]]`"),
        ("RawAlert", "`[[alerts]]`"),
        ("RawDataset", "`[[datasets]]`"),
        ("RawMember", "`[datasets.members]`"),
        ("RawPostgres", "`[datasets.postgres]`"),
        ("RawRedis", "`[datasets.redis]`"),
        ("RawBackup", "`[[backups]]`"),
        ("RawDependency", "`[[dependencies]]`"),
        ("RawKeep", "`keep`"),
        ("RawRepo", "`[[backups.repos]]`"),
        ("RawApi", "`[api]`"),
        ("RawTls", "`[tls]`"),
    ];
    let mut missing = Vec::new();
    let structs: Vec<&str> = raw
        .match_indices("pub struct Raw")
        .filter_map(|(i, _)| raw[i + 11..].split([' ', '{']).next())
        .collect();
    for s in &structs {
        if *s != "RawConfig" && !tables.iter().any(|(t, _)| t == s) {
            missing.push(format!(
                "{s}: no section of docs/config.md is mapped to it here"
            ));
        }
    }
    for (name, heading) in tables {
        let Some(sec) = section(&doc, heading) else {
            missing.push(format!("no section {heading}"));
            continue;
        };
        for field in struct_fields(&raw, name) {
            if !sec.contains(&format!("| `{field}` |")) {
                missing.push(format!("{heading} {field}"));
            }
        }
    }
    for table in struct_fields(&raw, "RawConfig") {
        let heading_has = |h: &str| section(&doc, h).is_some();
        if !heading_has(&format!("`[{table}]`")) && !heading_has(&format!("`[[{table}]]`")) {
            missing.push(format!("top-level table {table}"));
        }
    }
    assert!(
        missing.is_empty(),
        "docs/config.md lacks: {}",
        missing.join(", ")
    );
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_metric_is_in_the_metrics_page() {
    let doc = read("docs/metrics.md");
    let mut files = Vec::new();
    for e in std::fs::read_dir(root().join("crates"))
        .expect("crates")
        .flatten()
    {
        rust_files(&e.path().join("src"), &mut files);
    }
    let mut names = std::collections::BTreeSet::new();
    for f in &files {
        let text = std::fs::read_to_string(f).expect("source");
        for (i, _) in text.match_indices("\"outlast_") {
            let rest = &text[i + 1..];
            let end = rest.find('"').unwrap_or(0);
            let name = &rest[..end];
            // The drill's table shares the prefix but is no metric.
            if name != "outlast_drill" && name.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
                names.insert(name.to_string());
            }
        }
    }
    assert!(names.len() > 30, "found only {names:?}");
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !doc.contains(&format!("`{n}`")))
        .collect();
    assert!(missing.is_empty(), "docs/metrics.md lacks {missing:?}");
}

#[test]
fn every_endpoint_is_in_the_api_page() {
    let web = read("crates/outlast-web/src/lib.rs");
    let doc = read("docs/api.md");
    let mut paths = Vec::new();
    let mut rest = web.as_str();
    while let Some(i) = rest.find(".route(") {
        rest = &rest[i + 7..];
        let q = rest.find('"').expect("quoted path");
        let tail = &rest[q + 1..];
        let path = &tail[..tail.find('"').expect("closing quote")];
        // axum's `:name` is written `{name}` in the docs.
        let shown: String = path
            .split('/')
            .map(|seg| match seg.strip_prefix(':') {
                Some(name) => format!("{{{name}}}"),
                None => seg.to_string(),
            })
            .collect::<Vec<_>>()
            .join("/");
        paths.push(shown);
    }
    assert!(paths.len() >= 6, "{paths:?}");
    let missing: Vec<&String> = paths
        .iter()
        .filter(|p| !doc.contains(&format!(" {p}`")) && !doc.contains(&format!(" {p}?")))
        .collect();
    assert!(missing.is_empty(), "docs/api.md lacks {missing:?}");
}

#[test]
fn every_fault_and_drill_metric_is_in_the_scenario_page() {
    let src = read("crates/outlast-drill/src/scenario.rs");
    let doc = read("docs/scenario.md");
    let mut names = Vec::new();
    for line in src.lines().map(str::trim) {
        // The fault match: `"kill" => Fault::Kill(...)`, `"sink-down" | "sink-up" => {`.
        if line.starts_with('"') && line.contains("=>") {
            let arms = line.split("=>").next().unwrap_or("");
            names.extend(
                arms.split('|')
                    .map(|a| a.trim().trim_matches('"').to_string())
                    .filter(|a| !a.is_empty()),
            );
        }
    }
    assert!(names.len() >= 9, "{names:?}");
    let metrics = src
        .split("pub const METRICS: &[&str] = &[")
        .nth(1)
        .and_then(|r| r.split("];").next())
        .expect("METRICS");
    let metrics: Vec<String> = metrics
        .split(',')
        .map(|m| m.trim().trim_matches('"').to_string())
        .filter(|m| !m.is_empty())
        .collect();
    let mut missing: Vec<String> = names
        .iter()
        .filter(|n| !doc.contains(&format!("| `{n}` |")))
        .map(|n| format!("fault {n}"))
        .collect();
    missing.extend(
        metrics
            .iter()
            .filter(|m| !doc.contains(&format!("| `{m}` |")))
            .map(|m| format!("metric {m}")),
    );
    assert!(missing.is_empty(), "docs/scenario.md lacks {missing:?}");
}

/// Every command `outlast --help` lists is in README's command table and in docs/cli.md.
#[test]
fn every_command_is_in_the_readme_and_the_cli_page() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_outlast"))
        .arg("--help")
        .output()
        .expect("outlast --help");
    let help = String::from_utf8_lossy(&out.stdout).to_string();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|c| *c != "help")
        .collect();
    assert!(commands.len() >= 15, "{help}");
    let readme = read("README.md");
    let table = section(&readme, "What works today").expect("README: What works today");
    let cli = read("docs/cli.md");
    let missing: Vec<String> = commands
        .iter()
        .flat_map(|c| {
            let used = format!("`outlast {c}");
            [
                (!table.contains(&used)).then(|| format!("README.md lacks {c}")),
                (!cli.contains(&used)).then(|| format!("docs/cli.md lacks {c}")),
            ]
        })
        .flatten()
        .collect();
    assert!(missing.is_empty(), "{missing:?}");
}
