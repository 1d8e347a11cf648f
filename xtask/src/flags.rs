//! A flags parser small enough to read: switches, `--key value` / `--key=value`, no more.

use anyhow::{Result, bail};

/// The command line after the program name, consumed flag by flag.
#[derive(Debug)]
pub struct Args {
    rest: Vec<String>,
}

impl Args {
    pub fn new(args: impl Iterator<Item = String>) -> Self {
        Self {
            rest: args.collect(),
        }
    }

    /// The first argument, if it is not a flag.
    pub fn command(&mut self) -> Option<String> {
        match self.rest.first() {
            Some(first) if !first.starts_with("--") => Some(self.rest.remove(0)),
            _ => None,
        }
    }

    /// Removes `name` if present.
    pub fn switch(&mut self, name: &str) -> bool {
        let before = self.rest.len();
        self.rest.retain(|a| a != name);
        self.rest.len() != before
    }

    /// Removes `name value` or `name=value` and returns the value.
    pub fn value(&mut self, name: &str) -> Result<Option<String>> {
        let prefix = format!("{name}=");
        if let Some(i) = self.rest.iter().position(|a| a.starts_with(&prefix)) {
            return Ok(Some(self.rest.remove(i)[prefix.len()..].to_string()));
        }
        let Some(i) = self.rest.iter().position(|a| a == name) else {
            return Ok(None);
        };
        if i + 1 >= self.rest.len() {
            bail!("{name} needs a value");
        }
        self.rest.remove(i);
        Ok(Some(self.rest.remove(i)))
    }

    /// Fails on anything not consumed.
    pub fn finish(self) -> Result<()> {
        if self.rest.is_empty() {
            Ok(())
        } else {
            bail!("unexpected arguments: {}", self.rest.join(" "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        Args::new(s.split_whitespace().map(String::from))
    }

    #[test]
    fn parses_switches_values_and_rejects_leftovers() {
        let mut a = args("repro --quick --seeds 2 --data=real");
        assert_eq!(a.command().as_deref(), Some("repro"));
        assert!(a.switch("--quick"));
        assert!(!a.switch("--quick"));
        assert_eq!(a.value("--seeds").unwrap().as_deref(), Some("2"));
        assert_eq!(a.value("--data").unwrap().as_deref(), Some("real"));
        assert_eq!(a.value("--sae-bin").unwrap(), None);
        a.finish().unwrap();

        let mut a = args("bench --backend");
        a.command();
        assert!(a.value("--backend").is_err());
        assert!(args("ci --what").finish().is_err());
    }
}
