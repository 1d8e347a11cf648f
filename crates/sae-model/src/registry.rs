//! Name -> sparsifier factories, so configurations can name a rule and its parameters.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::error::{Result, SaeError};
use crate::sparsifier::{FeatureChoice, MutualChoice, Sparsifier, TopK};

/// Builds a sparsifier from its parameters (the specification object without `"name"`).
pub type SparsifierFactory = fn(&Value) -> Result<Box<dyn Sparsifier>>;

/// Maps names to sparsifier factories.
///
/// A specification is a JSON object with a `"name"` and the rule's parameters, e.g.
/// `{"name": "feature_choice", "k": 32, "capacities": "zipf"}`.
#[derive(Clone, Default)]
pub struct Registry {
    factories: BTreeMap<String, SparsifierFactory>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("names", &self.names())
            .finish()
    }
}

/// Parses a factory's parameters into a serde type (helper for factories).
pub fn parse_params<T: DeserializeOwned>(params: &Value) -> Result<T> {
    Ok(serde_json::from_value(params.clone())?)
}

fn build_topk(p: &Value) -> Result<Box<dyn Sparsifier>> {
    Ok(Box::new(parse_params::<TopK>(p)?))
}

fn build_mutual_choice(p: &Value) -> Result<Box<dyn Sparsifier>> {
    Ok(Box::new(parse_params::<MutualChoice>(p)?))
}

fn build_feature_choice(p: &Value) -> Result<Box<dyn Sparsifier>> {
    Ok(Box::new(parse_params::<FeatureChoice>(p)?))
}

impl Registry {
    /// A registry with no entries.
    pub fn empty() -> Self {
        Self::default()
    }

    /// A registry with the paper's sparsifiers: `topk`, `mutual_choice` (alias `batch_topk`)
    /// and `feature_choice`.
    pub fn with_builtins() -> Self {
        let mut r = Self::empty();
        r.register("topk", build_topk);
        r.register("mutual_choice", build_mutual_choice);
        r.register("batch_topk", build_mutual_choice);
        r.register("feature_choice", build_feature_choice);
        r
    }

    /// Registers (or replaces) a factory under `name`.
    pub fn register(&mut self, name: impl Into<String>, factory: SparsifierFactory) -> &mut Self {
        self.factories.insert(name.into(), factory);
        self
    }

    /// Registered names, sorted.
    pub fn names(&self) -> Vec<String> {
        self.factories.keys().cloned().collect()
    }

    /// Builds the sparsifier a specification names.
    pub fn build(&self, spec: &Value) -> Result<Box<dyn Sparsifier>> {
        let obj = spec.as_object().ok_or_else(|| {
            SaeError::Config("a sparsifier specification must be an object".into())
        })?;
        let name = obj.get("name").and_then(Value::as_str).ok_or_else(|| {
            SaeError::Config("a sparsifier specification needs a \"name\"".into())
        })?;
        let factory = self
            .factories
            .get(name)
            .ok_or_else(|| SaeError::UnknownSparsifier {
                name: name.to_owned(),
                suggestion: self.closest(name),
                known: self.names(),
            })?;
        let params: Map<String, Value> = obj
            .iter()
            .filter(|(k, _)| k.as_str() != "name")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let sparsifier = factory(&Value::Object(params))?;
        if sparsifier.k() == 0 {
            return Err(SaeError::Config(
                "sparsifier.k = 0 is out of range: must be at least 1 (k = 0 selects nothing, \
                 so every feature would be dead)"
                    .into(),
            ));
        }
        Ok(sparsifier)
    }

    /// The registered name closest to `name` (by edit distance, ignoring case, `-` and `_`),
    /// when it is close enough to be a likely typo: at most one edit per three characters of
    /// the registered name, and at least one (so `nope` is not mistaken for `topk`).
    pub fn closest(&self, name: &str) -> Option<String> {
        let squash = |s: &str| -> Vec<char> {
            s.chars()
                .filter(|c| *c != '_' && *c != '-')
                .flat_map(char::to_lowercase)
                .collect()
        };
        let wanted = squash(name);
        self.factories
            .keys()
            .map(|known| (edit_distance(&wanted, &squash(known)), known))
            .filter(|(distance, known)| *distance <= 1.max(known.len() / 3))
            .min()
            .map(|(_, known)| known.clone())
    }

    /// Builds the sparsifier a JSON text names.
    pub fn build_str(&self, spec: &str) -> Result<Box<dyn Sparsifier>> {
        self.build(&serde_json::from_str(spec)?)
    }
}

/// Levenshtein distance between two character sequences.
fn edit_distance(a: &[char], b: &[char]) -> usize {
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (diagonal + usize::from(ca != cb))
                .min(row[j] + 1)
                .min(above + 1);
            diagonal = above;
        }
    }
    row[b.len()]
}
