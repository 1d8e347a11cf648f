//! `--set a.b.c=value` overrides applied to a TOML document before it is typed.

use crate::TrainError;

/// Applies `path=value` assignments to `doc`, creating tables along the path as needed.
///
/// The value is parsed as a TOML value (`64`, `1e-3`, `true`, `"x"`, `[1, 2]`); anything that
/// does not parse as one is taken as a bare string, so `--set data.path=/tmp/x` works.
pub fn apply_overrides(doc: &mut toml::Table, assignments: &[String]) -> Result<(), TrainError> {
    for assignment in assignments {
        let (path, raw) = assignment
            .split_once('=')
            .ok_or_else(|| TrainError::Override {
                assignment: assignment.clone(),
                reason: "expected KEY=VALUE".into(),
            })?;
        let keys: Vec<&str> = path.trim().split('.').collect();
        if keys.iter().any(|k| k.is_empty()) {
            return Err(TrainError::Override {
                assignment: assignment.clone(),
                reason: format!("`{path}` is not a dotted key path"),
            });
        }
        set_path(doc, &keys, parse_value(raw.trim())).map_err(|reason| TrainError::Override {
            assignment: assignment.clone(),
            reason,
        })?;
    }
    Ok(())
}

fn parse_value(raw: &str) -> toml::Value {
    let wrapped = format!("v = {raw}");
    match wrapped.parse::<toml::Table>() {
        Ok(mut t) => t.remove("v").expect("key v was written"),
        Err(_) => toml::Value::String(raw.to_string()),
    }
}

fn set_path(table: &mut toml::Table, keys: &[&str], value: toml::Value) -> Result<(), String> {
    let (last, parents) = keys.split_last().expect("non-empty path");
    let mut current = table;
    for (depth, key) in parents.iter().enumerate() {
        let entry = current
            .entry(key.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = entry
            .as_table_mut()
            .ok_or_else(|| format!("`{}` is a value, not a table", keys[..=depth].join(".")))?;
    }
    current.insert(last.to_string(), value);
    Ok(())
}
