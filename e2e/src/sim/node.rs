//! [`SimNode`]: a lab owned by the current process (tests), removed on drop.

use super::error::Result;
use super::lab::Lab;
use super::spec::SimSpec;
use super::teardown::down;
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU32, Ordering};

/// A simulated node that lives as long as this value: dropping it (also while
/// a failing test unwinds) runs `down`. Everything else is on [`Lab`], which
/// it dereferences to.
#[derive(Debug)]
pub struct SimNode {
    lab: Option<Lab>,
}

impl SimNode {
    /// Builds the lab (replacing one of the same name) with this process as
    /// owner, so `gc` removes it if the process dies without dropping it.
    pub fn up(spec: &SimSpec) -> Result<SimNode> {
        let lab = Lab::create(spec, Some(std::process::id()))?;
        Ok(SimNode { lab: Some(lab) })
    }

    /// Gives up ownership: the lab stays after this value is gone.
    pub fn keep(mut self) -> Lab {
        self.lab
            .take()
            .expect("SimNode holds its lab until keep or drop")
    }

    /// Removes the lab now and reports failures (drop ignores them).
    pub fn down(mut self) -> Result<()> {
        match self.lab.take() {
            Some(lab) => down(lab.name()),
            None => Ok(()),
        }
    }
}

impl Deref for SimNode {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("SimNode holds its lab until keep or drop")
    }
}

impl DerefMut for SimNode {
    fn deref_mut(&mut self) -> &mut Lab {
        self.lab
            .as_mut()
            .expect("SimNode holds its lab until keep or drop")
    }
}

impl Drop for SimNode {
    fn drop(&mut self) {
        if let Some(lab) = self.lab.take() {
            if let Err(e) = down(lab.name()) {
                eprintln!("sriov-lab: cleanup of lab {:?} failed: {e}", lab.name());
            }
        }
    }
}

/// A lab name unique to this process and call: `PREFIX-PID-N`, with the
/// prefix cut and cleaned so the result is always a valid name.
pub fn unique_name(prefix: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let suffix = format!("-{}-{n}", std::process::id());
    let mut clean: String = prefix
        .chars()
        .map(|c| c.to_ascii_lowercase())
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean = clean.trim_start_matches('-').to_string();
    if clean.is_empty() {
        clean.push_str("lab");
    }
    clean.truncate(
        super::spec::MAX_NAME_LEN
            .saturating_sub(suffix.len())
            .max(1),
    );
    clean + &suffix
}

#[cfg(test)]
mod tests {
    use super::unique_name;
    use crate::sim::spec::validate_name;

    #[test]
    fn unique_names_are_valid_and_distinct() {
        let a = unique_name("Kernel_Emulator-test");
        let b = unique_name("Kernel_Emulator-test");
        assert_ne!(a, b);
        for name in [a, b, unique_name(""), unique_name("../x")] {
            assert!(validate_name(&name).is_ok(), "{name}");
        }
    }
}
