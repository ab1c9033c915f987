//! `--help` as a newcomer reads it: every flag and argument of every command says what it
//! is, and every command shows an example.

use std::process::Command;

fn help(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_outlast"))
        .args(args)
        .arg("--help")
        .env("COLUMNS", "200")
        .output()
        .expect("outlast --help");
    assert!(out.status.success(), "{args:?} --help failed");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Flag and argument lines without a description.
fn undescribed(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let is_item = |l: &str| {
        let t = l.trim_start();
        l.starts_with("  ") && (t.starts_with('-') || t.starts_with('<') || t.starts_with('['))
    };
    let mut out = Vec::new();
    for (i, l) in lines.iter().enumerate() {
        if !is_item(l) {
            continue;
        }
        let t = l.trim();
        let described_here = t
            .split_once("  ")
            .is_some_and(|(_, d)| !d.trim().is_empty());
        let described_below = lines
            .get(i + 1)
            .is_some_and(|n| n.starts_with("          ") && !is_item(n) && !n.trim().is_empty());
        if !described_here && !described_below && !t.starts_with("-h, --help") {
            out.push(t.to_string());
        }
    }
    out
}

#[test]
fn every_flag_is_described_and_every_command_has_an_example() {
    let commands: [&[&str]; 8] = [
        &["agent"],
        &["check"],
        &["status"],
        &["drill"],
        &["demo"],
        &["events", "send"],
        &["events", "tail"],
        &[],
    ];
    let mut problems = Vec::new();
    for cmd in commands {
        let text = help(cmd);
        for item in undescribed(&text) {
            problems.push(format!(
                "outlast {}: {item} has no description",
                cmd.join(" ")
            ));
        }
        if !cmd.is_empty() && !text.contains("Example") {
            problems.push(format!("outlast {}: no example", cmd.join(" ")));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
