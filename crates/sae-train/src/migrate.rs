//! Configurations, checkpoints and models written by earlier versions, brought to today's
//! schema before they are typed. Each step says what changed and refuses what it cannot map
//! without changing a run's meaning.

use serde_json::{Map, Value};

/// Where the Zipf exponent lives now.
const ZIPF_EXPONENT: &str = "step.stats.zipf_exponent";

/// The Zipf exponent used to be given twice: as `sparsifier.exponent` (Feature Choice's Zipf
/// capacities) and as `step.aux.exponent` (`aux_zipf`'s targets), with the evaluation taking
/// the latter or 1. It is one value now, `step.stats.zipf_exponent`. Moves the old keys of a
/// run configuration as JSON (a checkpoint's) there; returns the exponent when one was moved.
///
/// # Errors
/// See [`one_exponent`].
pub(crate) fn zipf_exponent(config: &mut Value) -> Result<Option<f64>, String> {
    let mut capacities = None;
    if let Some(spec) = config.get_mut("sparsifier").and_then(Value::as_object_mut)
        && let Some(old) = spec.remove("exponent")
        && spec.get("capacities").and_then(Value::as_str) == Some("zipf")
    {
        capacities = Some(json_number("sparsifier.exponent", &old)?);
    }
    let mut aux = None;
    if let Some(table) = config
        .pointer_mut("/step/aux")
        .and_then(Value::as_object_mut)
        && let Some(old) = table.remove("exponent")
    {
        aux = Some(json_number("step.aux.exponent", &old)?);
    }
    if capacities.is_none() && aux.is_none() {
        return Ok(None);
    }
    let stats = object_at(config, &["step", "stats"]);
    let current = match stats.get("zipf_exponent") {
        Some(value) => Some(json_number(ZIPF_EXPONENT, value)?),
        None => None,
    };
    let exponent = one_exponent(capacities, aux, current)?;
    if let Some(exponent) = exponent {
        stats.insert("zipf_exponent".into(), exponent.into());
    }
    Ok(exponent)
}

/// [`zipf_exponent`] for a configuration file's TOML, before it is typed. (TOML, unlike JSON,
/// has NaN and infinities, which the range checks must still see, so it is not converted.)
pub(crate) fn zipf_exponent_toml(config: &mut toml::Table) -> Result<(), String> {
    let mut capacities = None;
    if let Some(toml::Value::Table(spec)) = config.get_mut("sparsifier")
        && let Some(old) = spec.remove("exponent")
        && spec.get("capacities").and_then(toml::Value::as_str) == Some("zipf")
    {
        capacities = Some(toml_number("sparsifier.exponent", &old)?);
    }
    let (mut aux, mut current) = (None, None);
    if let Some(step) = config.get_mut("step").and_then(toml::Value::as_table_mut) {
        if let Some(old) = step
            .get_mut("aux")
            .and_then(toml::Value::as_table_mut)
            .and_then(|table| table.remove("exponent"))
        {
            aux = Some(toml_number("step.aux.exponent", &old)?);
        }
        if let Some(value) = step
            .get("stats")
            .and_then(|stats| stats.get("zipf_exponent"))
        {
            current = Some(toml_number(ZIPF_EXPONENT, value)?);
        }
    }
    if let Some(exponent) = one_exponent(capacities, aux, current)?
        && current.is_none()
    {
        // Where `step` or `step.stats` is not a table, the typed reading reports it.
        if let Some(stats) = config
            .entry("step")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            .as_table_mut()
            .map(|step| {
                step.entry("stats")
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
            })
            .and_then(toml::Value::as_table_mut)
        {
            stats.insert("zipf_exponent".into(), exponent.into());
        }
    }
    Ok(())
}

/// The one exponent from the old places (`capacities`: `sparsifier.exponent` of Zipf
/// capacities, `aux`: `step.aux.exponent`) and the new (`current`); `None` when no old one is
/// given.
///
/// # Errors
/// The values given disagree (the message names them and their values).
fn one_exponent(
    capacities: Option<f64>,
    aux: Option<f64>,
    current: Option<f64>,
) -> Result<Option<f64>, String> {
    let given: Vec<(&str, f64)> = [
        ("sparsifier.exponent", capacities),
        ("step.aux.exponent", aux),
    ]
    .into_iter()
    .filter_map(|(key, value)| Some((key, value?)))
    .collect();
    let Some(&(_, exponent)) = given.first() else {
        return Ok(None);
    };
    let all = given
        .iter()
        .copied()
        .chain(current.map(|value| (ZIPF_EXPONENT, value)));
    if all.clone().any(|(_, value)| value != exponent) {
        let listed: Vec<String> = all.map(|(key, value)| format!("{key} = {value}")).collect();
        return Err(format!(
            "the Zipf exponent is given as {}; it is one value now, {ZIPF_EXPONENT} (Feature \
             Choice's Zipf capacities, aux_zipf's targets and the under-used fraction all use \
             it): give it once there",
            listed.join(" and ")
        ));
    }
    Ok(Some(exponent))
}

/// A sparsifier specification outside a run configuration (a model's metadata): an old
/// `exponent` parameter is dropped, since a trained model's selection does not use it.
pub(crate) fn sparsifier_spec(spec: &mut Value) {
    if let Some(spec) = spec.as_object_mut() {
        spec.remove("exponent");
    }
}

/// A checkpoint's JSON state: its configuration as [`zipf_exponent`], and the feature
/// statistics' own copy of the statistics settings likewise.
pub(crate) fn run_state(state: &mut Value) -> Result<(), String> {
    let Some(config) = state.get_mut("config") else {
        return Ok(());
    };
    if let Some(exponent) = zipf_exponent(config)? {
        object_at(state, &["stats", "config"]).insert("zipf_exponent".into(), exponent.into());
    }
    Ok(())
}

fn json_number(key: &str, value: &Value) -> Result<f64, String> {
    value
        .as_f64()
        .ok_or_else(|| format!("{key}: expected a number, found {value}"))
}

fn toml_number(key: &str, value: &toml::Value) -> Result<f64, String> {
    match value {
        toml::Value::Float(x) => Ok(*x),
        toml::Value::Integer(i) => Ok(*i as f64),
        other => Err(format!("{key}: expected a number, found {other}")),
    }
}

/// The object at `path` under `value`, created (replacing anything that is not an object)
/// where missing.
fn object_at<'a>(value: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut at = value;
    for key in path {
        if !at.is_object() {
            *at = Value::Object(Map::new());
        }
        at = at
            .as_object_mut()
            .expect("made an object above")
            .entry(*key)
            .or_insert_with(|| Value::Object(Map::new()));
    }
    if !at.is_object() {
        *at = Value::Object(Map::new());
    }
    at.as_object_mut().expect("made an object above")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn moves_the_zipf_capacity_exponent_and_drops_an_unused_one() {
        let mut config = json!({
            "sparsifier": { "name": "feature_choice", "k": 4, "capacities": "zipf", "exponent": 1.5 },
        });
        assert_eq!(zipf_exponent(&mut config), Ok(Some(1.5)));
        assert_eq!(
            config.pointer("/step/stats/zipf_exponent"),
            Some(&json!(1.5))
        );
        assert_eq!(config.pointer("/sparsifier/exponent"), None);

        let mut uniform = json!({
            "sparsifier": { "name": "feature_choice", "k": 4, "capacities": "uniform", "exponent": 3.0 },
            "step": { "aux": { "kind": "aux_zipf", "exponent": 0.5 } },
        });
        assert_eq!(zipf_exponent(&mut uniform), Ok(Some(0.5)));
        assert_eq!(
            uniform.pointer("/step/aux"),
            Some(&json!({ "kind": "aux_zipf" }))
        );
        assert_eq!(uniform.pointer("/sparsifier/exponent"), None);
    }

    #[test]
    fn disagreeing_exponents_are_refused_by_name() {
        let mut config = json!({
            "sparsifier": { "name": "feature_choice", "capacities": "zipf", "exponent": 1.0 },
            "step": { "aux": { "kind": "aux_zipf", "exponent": 2.0 } },
        });
        let err = zipf_exponent(&mut config).unwrap_err();
        assert!(err.contains("sparsifier.exponent = 1"), "{err}");
        assert!(err.contains("step.aux.exponent = 2"), "{err}");
        let mut config = json!({
            "step": { "aux": { "kind": "aux_zipf", "exponent": 2.0 }, "stats": { "zipf_exponent": 1.0 } },
        });
        let err = zipf_exponent(&mut config).unwrap_err();
        assert!(err.contains("step.stats.zipf_exponent = 1"), "{err}");
    }

    #[test]
    fn a_current_configuration_is_left_alone() {
        let original = json!({
            "sparsifier": { "name": "feature_choice", "k": 4, "capacities": "zipf" },
            "step": { "aux": { "kind": "aux_zipf" }, "stats": { "zipf_exponent": 0.7 } },
        });
        let mut config = original.clone();
        assert_eq!(zipf_exponent(&mut config), Ok(None));
        assert_eq!(config, original);
    }

    #[test]
    fn a_checkpoint_state_moves_the_statistics_copy_too() {
        let mut state = json!({
            "config": { "step": { "aux": { "kind": "aux_zipf", "exponent": 1.2 } } },
            "stats": { "config": { "dead_window": 5 } },
        });
        run_state(&mut state).unwrap();
        assert_eq!(
            state.pointer("/stats/config/zipf_exponent"),
            Some(&json!(1.2))
        );
        assert_eq!(state.pointer("/stats/config/dead_window"), Some(&json!(5)));
        assert_eq!(
            state.pointer("/config/step/stats/zipf_exponent"),
            Some(&json!(1.2))
        );
    }

    #[test]
    fn a_configuration_file_moves_its_old_keys_and_keeps_non_finite_values() {
        let mut doc: toml::Table = r#"
            [sparsifier]
            name = "feature_choice"
            capacities = "zipf"
            exponent = 0.8
            [step]
            lr = nan
            aux = { kind = "aux_zipf", exponent = 0.8 }
        "#
        .parse()
        .unwrap();
        zipf_exponent_toml(&mut doc).unwrap();
        assert_eq!(doc["step"]["stats"]["zipf_exponent"].as_float(), Some(0.8));
        assert!(doc["sparsifier"].get("exponent").is_none());
        assert!(doc["step"]["aux"].get("exponent").is_none());
        assert!(doc["step"]["lr"].as_float().unwrap().is_nan());

        let mut clash: toml::Table = r#"
            step = { aux = { kind = "aux_zipf", exponent = 2 }, stats = { zipf_exponent = 1.0 } }
        "#
        .parse()
        .unwrap();
        let err = zipf_exponent_toml(&mut clash).unwrap_err();
        assert!(err.contains("step.aux.exponent = 2"), "{err}");
        assert!(err.contains("step.stats.zipf_exponent = 1"), "{err}");
    }
}
