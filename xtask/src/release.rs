//! `cargo xtask release`: checks that every publishable crate under `crates/` is ready, then
//! packages them (a dry run: nothing is ever uploaded) and prints the publish order.
//!
//! Ready means: version, description, license, repository and an existing README in the
//! manifest, and the crate named in the top-level `CHANGELOG.md` section of its version
//! (`## 0.1.0 — ...`); and the README's main command still works (`cargo xtask ci`'s smoke
//! run).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::shell::{cargo, root, step};

/// What a release check needs of one workspace package.
#[derive(Debug, Clone, PartialEq)]
pub struct Package {
    pub name: String,
    pub version: String,
    pub description: Option<String>,
    pub license: Option<String>,
    pub repository: Option<String>,
    /// The README path, resolved against the manifest directory.
    pub readme: Option<PathBuf>,
    pub publishable: bool,
    pub manifest_dir: PathBuf,
    /// Names of the workspace packages it depends on by path (normal and build dependencies:
    /// dev-dependencies are stripped on packaging).
    pub path_deps: Vec<String>,
}

/// The packages of `cargo metadata --format-version 1 --no-deps`.
pub fn packages_from_metadata(metadata: &Value) -> Result<Vec<Package>> {
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata: no packages array")?;
    let text = |v: &Value| {
        v.as_str()
            .map(str::to_string)
            .filter(|s| !s.trim().is_empty())
    };
    packages
        .iter()
        .map(|p| {
            let manifest = PathBuf::from(text(&p["manifest_path"]).context("no manifest_path")?);
            let manifest_dir = manifest.parent().unwrap_or(Path::new(".")).to_path_buf();
            let readme = text(&p["readme"])
                .map(|r| manifest_dir.join(r))
                .or_else(|| Some(manifest_dir.join("README.md")).filter(|p| p.is_file()));
            let path_deps = p["dependencies"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|d| d["path"].is_string() && d["kind"].as_str() != Some("dev"))
                .filter_map(|d| text(&d["name"]))
                .collect();
            Ok(Package {
                name: text(&p["name"]).context("package without a name")?,
                version: text(&p["version"]).unwrap_or_default(),
                description: text(&p["description"]),
                license: text(&p["license"]).or_else(|| text(&p["license_file"])),
                repository: text(&p["repository"]),
                readme,
                // `publish = false` is `[]`; absent is `null` (any registry).
                publishable: p["publish"].as_array().is_none_or(|r| !r.is_empty()),
                manifest_dir,
                path_deps,
            })
        })
        .collect()
}

/// The body of the `## <version>` section of a changelog, up to the next `## ` heading.
pub fn changelog_section<'a>(changelog: &'a str, version: &str) -> Option<&'a str> {
    let mut start = None;
    let mut offset = 0;
    for line in changelog.split_inclusive('\n') {
        if let Some(heading) = line.strip_prefix("## ") {
            if start.is_some() {
                return start.map(|s| &changelog[s..offset]);
            }
            let first = heading.split_whitespace().next().unwrap_or("");
            if first.trim_start_matches('v') == version {
                start = Some(offset + line.len());
            }
        }
        offset += line.len();
    }
    start.map(|s| &changelog[s..])
}

/// What is missing for `package` to be published; empty when it is ready.
pub fn check_package(package: &Package, changelog: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let name = &package.name;
    if package.version.is_empty() {
        problems.push(format!("{name}: no version"));
    }
    for (field, value) in [
        ("description", &package.description),
        ("license", &package.license),
        ("repository", &package.repository),
    ] {
        if value.is_none() {
            problems.push(format!("{name}: no `{field}` in Cargo.toml"));
        }
    }
    match &package.readme {
        Some(readme) if readme.is_file() => {}
        Some(readme) => problems.push(format!("{name}: README {} missing", readme.display())),
        None => problems.push(format!("{name}: no README")),
    }
    match changelog_section(changelog, &package.version) {
        None => problems.push(format!(
            "{name}: CHANGELOG.md has no `## {}` section",
            package.version
        )),
        Some(section) if !mentions(section, name) => problems.push(format!(
            "{name}: not mentioned in CHANGELOG.md's `## {}` section",
            package.version
        )),
        Some(_) => {}
    }
    problems
}

/// Whether `text` names the crate as a word (`sae-data` is not found in `sae-data-extra`).
fn mentions(text: &str, name: &str) -> bool {
    text.match_indices(name).any(|(i, _)| {
        let ok = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '-' || c == '_'));
        ok(text[..i].chars().next_back()) && ok(text[i + name.len()..].chars().next())
    })
}

/// Dependencies before dependents, ties by name; an error on a cycle.
pub fn publish_order(packages: &[&Package]) -> Result<Vec<String>> {
    let names: BTreeSet<&str> = packages.iter().map(|p| p.name.as_str()).collect();
    let mut pending: BTreeMap<&str, BTreeSet<&str>> = packages
        .iter()
        .map(|p| {
            let deps = p
                .path_deps
                .iter()
                .map(String::as_str)
                .filter(|d| names.contains(d))
                .collect();
            (p.name.as_str(), deps)
        })
        .collect();
    let mut order = Vec::new();
    while !pending.is_empty() {
        let Some(next) = pending
            .iter()
            .find(|(_, deps)| deps.is_empty())
            .map(|(n, _)| *n)
        else {
            bail!(
                "dependency cycle among {}",
                pending.keys().copied().collect::<Vec<_>>().join(", ")
            );
        };
        pending.remove(next);
        for deps in pending.values_mut() {
            deps.remove(next);
        }
        order.push(next.to_string());
    }
    Ok(order)
}

pub fn run() -> Result<()> {
    let root = root();
    let output = cargo()
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: Value = serde_json::from_slice(&output.stdout)?;
    let all = packages_from_metadata(&metadata)?;
    let crates_dir = root.join("crates");
    let publishable: Vec<&Package> = all
        .iter()
        .filter(|p| p.publishable && p.manifest_dir.starts_with(&crates_dir))
        .collect();
    let changelog_path = root.join("CHANGELOG.md");
    let changelog = std::fs::read_to_string(&changelog_path)
        .with_context(|| changelog_path.display().to_string())?;

    let problems: Vec<String> = publishable
        .iter()
        .flat_map(|p| check_package(p, &changelog))
        .collect();
    for problem in &problems {
        eprintln!("release check: {problem}");
    }
    if !problems.is_empty() {
        bail!("{} release check(s) failed", problems.len());
    }

    // The README's main command still works (a tiny training run and its report).
    crate::ci::smoke()?;

    let order = publish_order(&publishable)?;
    let publishable_names: BTreeSet<&str> = publishable.iter().map(|p| p.name.as_str()).collect();
    let by_name: BTreeMap<&str, &Package> = all.iter().map(|p| (p.name.as_str(), p)).collect();
    // A crate whose path dependency is unpublishable cannot be packaged: list its files only.
    let (packable, list_only): (Vec<&String>, Vec<&String>) = order.iter().partition(|n| {
        by_name[n.as_str()]
            .path_deps
            .iter()
            .all(|d| publishable_names.contains(d.as_str()))
    });
    if !packable.is_empty() {
        // One invocation: cargo resolves the not-yet-published path dependencies among them.
        let mut cmd = cargo();
        cmd.args(["package", "--no-verify", "--allow-dirty"]);
        for name in &packable {
            cmd.args(["-p", name]);
        }
        if step("package", &mut cmd).is_err() {
            eprintln!("packaging failed (offline?); listing the files that would be packaged");
            for name in &packable {
                list(name)?;
            }
        }
    }
    for name in &list_only {
        list(name)?;
    }
    println!("would publish, in this order (nothing was uploaded):");
    for (i, name) in order.iter().enumerate() {
        let p = by_name[name.as_str()];
        let note = if list_only.contains(&name) {
            " (depends on an unpublishable crate: listed, not packaged)"
        } else {
            ""
        };
        println!("  {}. {} {}{note}", i + 1, p.name, p.version);
    }
    Ok(())
}

fn list(name: &str) -> Result<()> {
    let mut cmd: Command = cargo();
    cmd.args(["package", "--list", "--allow-dirty", "-p", name]);
    step(&format!("list {name}"), &mut cmd)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGELOG: &str = "# Changelog\n\n## 0.2.0 — unreleased\n\n- `sae-data`: x\n\n\
                             ## 0.1.0 — 2026-01-01\n\n- `sae-alloc`: first\n- sae-data-extra\n";

    fn package(name: &str, version: &str, deps: &[&str]) -> Package {
        Package {
            name: name.into(),
            version: version.into(),
            description: Some("d".into()),
            license: Some("MIT".into()),
            repository: Some("https://example.org".into()),
            readme: Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml")),
            publishable: true,
            manifest_dir: PathBuf::from("/ws/crates").join(name),
            path_deps: deps.iter().map(|d| d.to_string()).collect(),
        }
    }

    #[test]
    fn changelog_sections_end_at_the_next_heading() {
        assert_eq!(
            changelog_section(CHANGELOG, "0.2.0"),
            Some("\n- `sae-data`: x\n\n")
        );
        assert!(
            changelog_section(CHANGELOG, "0.1.0")
                .unwrap()
                .contains("sae-alloc")
        );
        assert_eq!(changelog_section(CHANGELOG, "0.3.0"), None);
    }

    #[test]
    fn checks_metadata_and_changelog() {
        assert!(check_package(&package("sae-data", "0.2.0", &[]), CHANGELOG).is_empty());
        // In a changelog, but in another version's section, or only as a prefix of a word.
        let p = check_package(&package("sae-alloc", "0.2.0", &[]), CHANGELOG);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            check_package(&package("sae-data", "0.1.0", &[]), CHANGELOG)[0]
                .contains("not mentioned")
        );
        let mut bare = package("sae-data", "0.2.0", &[]);
        bare.license = None;
        bare.repository = None;
        bare.readme = Some(PathBuf::from("/nonexistent/README.md"));
        let p = check_package(&bare, CHANGELOG);
        assert_eq!(p.len(), 3, "{p:?}");
        assert!(p.iter().any(|m| m.contains("`license`")));
    }

    #[test]
    fn order_puts_dependencies_first() {
        let a = package("sae-alloc", "0.1.0", &[]);
        let d = package("sae-data", "0.1.0", &[]);
        let m = package("sae-model", "0.1.0", &["sae-alloc", "outside"]);
        let t = package("sae-train", "0.1.0", &["sae-model", "sae-data"]);
        let order = publish_order(&[&t, &m, &d, &a]).unwrap();
        assert_eq!(order, ["sae-alloc", "sae-data", "sae-model", "sae-train"]);
        let x = package("x", "0.1.0", &["y"]);
        let y = package("y", "0.1.0", &["x"]);
        assert!(publish_order(&[&x, &y]).is_err());
    }

    #[test]
    fn reads_cargo_metadata() {
        let metadata = serde_json::json!({"packages": [
            {"name": "sae-report", "version": "0.1.0", "description": "r", "license": "MIT",
             "repository": "https://example.org", "readme": null, "publish": null,
             "manifest_path": "/ws/crates/sae-report/Cargo.toml",
             "dependencies": [
                {"name": "sae-alloc", "kind": null, "path": "/ws/crates/sae-alloc"},
                {"name": "serde", "kind": null},
                {"name": "sae-data", "kind": "dev", "path": "/ws/crates/sae-data"}]},
            {"name": "xtask", "version": "0.1.0", "description": "", "publish": [],
             "manifest_path": "/ws/xtask/Cargo.toml", "dependencies": []}
        ]});
        let p = packages_from_metadata(&metadata).unwrap();
        assert_eq!(p[0].path_deps, ["sae-alloc"]);
        assert!(p[0].publishable && !p[1].publishable);
        assert_eq!(p[1].description, None);
        assert_eq!(p[0].readme, None);
    }
}
