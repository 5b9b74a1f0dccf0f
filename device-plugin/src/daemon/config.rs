//! The config file, watched: what a new read of it means, and applying it.

use super::*;

/// What a read of the config file means for the running config.
#[derive(Debug)]
pub(super) enum ConfigCheck {
    /// Same as the running config, or as the config refused last.
    Unchanged,
    /// The file holds the running config again after a refused one (or after it vanished):
    /// the refusal is over.
    Reverted,
    /// The file vanished (said once): the running config stays.
    Vanished,
    Refused(ConfigError),
    Apply(Box<Config>),
}

/// The texts seen in the config file.
#[derive(Debug, Default)]
pub(super) struct ConfigFile {
    /// Text of the running config; None while running the zero config for a missing file.
    running: Option<String>,
    /// Text refused last (`Some("")` after the file vanished), until the file changes again.
    refused: Option<String>,
}

impl ConfigFile {
    /// Classifies the file's content now (`None`: it does not exist).
    pub(super) fn check(&mut self, text: Option<String>, prefix: &str) -> ConfigCheck {
        let Some(text) = text else {
            if self.running.is_some() && self.refused.as_deref() != Some("") {
                self.refused = Some(String::new());
                return ConfigCheck::Vanished;
            }
            return ConfigCheck::Unchanged;
        };
        if self.running.as_ref() == Some(&text) {
            return match self.refused.take() {
                Some(_) => ConfigCheck::Reverted,
                None => ConfigCheck::Unchanged,
            };
        }
        if self.refused.as_ref() == Some(&text) {
            return ConfigCheck::Unchanged;
        }
        match Config::parse(&text, prefix) {
            Err(e) => {
                self.refused = Some(text);
                ConfigCheck::Refused(e)
            }
            Ok(config) => {
                self.running = Some(text);
                self.refused = None;
                ConfigCheck::Apply(Box::new(config))
            }
        }
    }
}

/// Loads the config at start: a missing file is the zero config.
pub(super) fn load_initial(opts: &Options) -> Result<(Config, ConfigFile), DaemonError> {
    let err = |source| DaemonError::Config {
        path: opts.config.clone(),
        source,
    };
    match std::fs::read_to_string(&opts.config) {
        Ok(text) => Ok((
            Config::parse(&text, &opts.resource_prefix).map_err(err)?,
            ConfigFile {
                running: Some(text),
                refused: None,
            },
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::warn!(
                "config {} does not exist: serving one pool per SR-IOV PF until it appears",
                opts.config.display()
            );
            Ok((
                Config::parse("{}", &opts.resource_prefix).map_err(err)?,
                ConfigFile::default(),
            ))
        }
        Err(source) => Err(err(ConfigError::Read {
            path: opts.config.display().to_string(),
            source,
        })),
    }
}

impl Daemon {
    /// Re-reads the config file; applies it when it changed and is valid.
    pub(super) fn check_config(&mut self) {
        let path = self.opts.config.clone();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => Some(t),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                self.ctx.metrics.error(ErrorKind::ConfigRead);
                tracing::error!(
                    "cannot read config {}: {e}; keeping the running config",
                    path.display()
                );
                return;
            }
        };
        match self.config_file.check(text, &self.opts.resource_prefix) {
            ConfigCheck::Unchanged => {}
            ConfigCheck::Vanished => tracing::warn!(
                "config {} disappeared; keeping the running config",
                path.display()
            ),
            ConfigCheck::Reverted => {
                tracing::info!("config {} holds the running config again", path.display());
                self.ctx.metrics.config_valid();
                self.problems.clear("config");
            }
            ConfigCheck::Refused(e) => {
                self.ctx.metrics.reconfiguration(false);
                tracing::error!(
                    "refusing the new config {}: {e}; the running config stays",
                    path.display()
                );
                self.problems
                    .set("config", format!("config {} refused: {e}", path.display()));
            }
            ConfigCheck::Apply(config) => {
                for w in &config.warnings {
                    tracing::warn!("config: {w}");
                }
                self.ctx.metrics.reconfiguration(true);
                tracing::info!("config {} changed: applying it", path.display());
                self.config = *config;
                self.problems.clear("config");
                self.stalled = crate::fault::hit("stall-on-config-change");
                self.sched.schedule(Job::Discovery, Duration::ZERO);
                self.sched.schedule(Job::Provisioning, Duration::ZERO);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"resourceList": [{"resourceName": "a", "selectors": {}}]}"#;
    const OTHER: &str = r#"{"resourceList": [{"resourceName": "b", "selectors": {}}]}"#;
    const BAD: &str = r#"{"resourceList": [{"resourceName": "a", "selector": {}}]}"#;

    fn check(f: &mut ConfigFile, text: Option<&str>) -> &'static str {
        match f.check(text.map(String::from), "intel.com") {
            ConfigCheck::Unchanged => "unchanged",
            ConfigCheck::Reverted => "reverted",
            ConfigCheck::Vanished => "vanished",
            ConfigCheck::Refused(_) => "refused",
            ConfigCheck::Apply(_) => "apply",
        }
    }

    /// A refused config put back to the running one ends the refusal (the alert clears):
    /// before, the unchanged text returned early and `config_valid` stayed 0.
    #[test]
    fn reverting_a_refused_config_ends_the_refusal() {
        let mut f = ConfigFile {
            running: Some(GOOD.into()),
            refused: None,
        };
        assert_eq!(check(&mut f, Some(GOOD)), "unchanged");
        assert_eq!(check(&mut f, Some(BAD)), "refused");
        assert_eq!(check(&mut f, Some(BAD)), "unchanged", "refused once");
        assert_eq!(check(&mut f, Some(GOOD)), "reverted");
        assert_eq!(check(&mut f, Some(GOOD)), "unchanged");
        assert_eq!(check(&mut f, Some(BAD)), "refused", "refused again");
        assert_eq!(check(&mut f, Some(OTHER)), "apply");
        assert_eq!(check(&mut f, Some(GOOD)), "apply");
    }

    #[test]
    fn a_vanished_file_is_said_once_and_its_return_is_no_change() {
        let mut f = ConfigFile {
            running: Some(GOOD.into()),
            refused: None,
        };
        assert_eq!(check(&mut f, None), "vanished");
        assert_eq!(check(&mut f, None), "unchanged");
        assert_eq!(check(&mut f, Some(GOOD)), "reverted");
        // Zero config (no file at start): a file appearing is applied.
        let mut zero = ConfigFile::default();
        assert_eq!(check(&mut zero, None), "unchanged");
        assert_eq!(check(&mut zero, Some(GOOD)), "apply");
    }
}
