//! The reference in `docs/` kept true where a test can: every `serve` flag and its
//! environment variable has a row in `docs/configuration.md`, and every relative link
//! in the README and `docs/` leads to a file that exists.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// What `audit-gateway serve --help` lists: its long flags and environment variables.
fn serve_help() -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new(env!("CARGO_BIN_EXE_audit-gateway"))
        .args(["serve", "--help"])
        .output()
        .expect("the binary runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for word in help.split(|c: char| c.is_whitespace() || c == ',' || c == '[' || c == ']') {
        if let Some(flag) = word.strip_prefix("--")
            && !flag.is_empty()
            && flag
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !matches!(flag, "help" | "version")
        {
            flags.insert(format!("--{flag}"));
        }
    }
    for part in help.split("[env: ").skip(1) {
        let name: String = part
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        envs.insert(name);
    }
    (flags, envs)
}

#[test]
fn every_serve_flag_and_variable_has_a_row_in_the_configuration_page() {
    let page = std::fs::read_to_string(root().join("docs/configuration.md")).expect("read");
    let rows: String = page.lines().filter(|l| l.starts_with("| `")).collect();
    let (flags, envs) = serve_help();
    assert!(flags.len() > 40, "the help lists flags: {flags:?}");
    let missing: Vec<_> = flags
        .iter()
        .filter(|f| !rows.contains(&format!("`{f}`")))
        .chain(envs.iter().filter(|e| !rows.contains(&format!("`{e}`"))))
        .collect();
    assert!(
        missing.is_empty(),
        "not in docs/configuration.md's table: {missing:?}"
    );
}

/// The targets of `](target)` links in `text` that are paths, not URLs or anchors.
fn relative_links(text: &str) -> Vec<String> {
    text.split("](")
        .skip(1)
        .filter_map(|rest| rest.split(')').next())
        .map(|t| t.split('#').next().unwrap_or_default().to_owned())
        .filter(|t| !t.is_empty() && !t.contains("://") && !t.starts_with("mailto:"))
        .collect()
}

#[test]
fn every_relative_link_of_the_readme_and_docs_leads_somewhere() {
    let mut pages = vec![root().join("README.md")];
    for entry in std::fs::read_dir(root().join("docs")).expect("docs/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            pages.push(path);
        }
    }
    let mut broken = Vec::new();
    for page in &pages {
        let text = std::fs::read_to_string(page).expect("read");
        let dir = page.parent().unwrap_or(Path::new("."));
        for target in relative_links(&text) {
            if !dir.join(&target).exists() {
                broken.push(format!("{}: {target}", page.display()));
            }
        }
    }
    assert!(pages.len() >= 8, "{pages:?}");
    assert!(broken.is_empty(), "links to nothing: {broken:?}");
}
