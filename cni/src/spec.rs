//! The CNI specification's pieces: versions, commands, the error JSON and its codes.

use serde::Serialize;
use std::fmt;

/// Spec versions we speak, oldest first (sriov-cni's VERSION answers the same list).
pub const SUPPORTED_VERSIONS: &[&str] = &[
    "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0",
];

/// What a network config without `cniVersion` means (the spec's and libcni's reading).
pub const IMPLIED_VERSION: &str = "0.1.0";

/// A CNI spec version we support.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum CniVersion {
    /// 0.1.0 and 0.2.0 share a result shape (`ip4`/`ip6`, no interfaces).
    V010,
    V020,
    V030,
    V031,
    V040,
    V100,
    V110,
}

impl CniVersion {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "0.1.0" => CniVersion::V010,
            "0.2.0" => CniVersion::V020,
            "0.3.0" => CniVersion::V030,
            "0.3.1" => CniVersion::V031,
            "0.4.0" => CniVersion::V040,
            "1.0.0" => CniVersion::V100,
            "1.1.0" => CniVersion::V110,
            other => {
                return Err(CniError::new(
                    ErrorCode::IncompatibleVersion,
                    format!(
                        "cniVersion {other:?} is not supported (supported: {})",
                        SUPPORTED_VERSIONS.join(", ")
                    ),
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CniVersion::V010 => "0.1.0",
            CniVersion::V020 => "0.2.0",
            CniVersion::V030 => "0.3.0",
            CniVersion::V031 => "0.3.1",
            CniVersion::V040 => "0.4.0",
            CniVersion::V100 => "1.0.0",
            CniVersion::V110 => "1.1.0",
        }
    }
}

impl fmt::Display for CniVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `CNI_COMMAND`
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn parse(s: &str) -> Result<Self, CniError> {
        Ok(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::new(
                    ErrorCode::InvalidEnv,
                    format!(
                    "CNI_COMMAND: unknown command {other:?} (ADD, DEL, CHECK, VERSION, STATUS, GC)"
                ),
                ))
            }
        })
    }

    /// As `CNI_COMMAND` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }

    /// The oldest spec version that has this command.
    pub fn min_version(self) -> CniVersion {
        match self {
            Command::Check => CniVersion::V040,
            Command::Status | Command::Gc => CniVersion::V110,
            _ => CniVersion::V010,
        }
    }
}

impl fmt::Display for Command {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The spec's well-known error codes (and ours, from 100).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    IncompatibleVersion = 1,
    UnsupportedField = 2,
    ContainerUnknown = 3,
    InvalidEnv = 4,
    Io = 5,
    Decode = 6,
    InvalidConfig = 7,
    TryAgainLater = 11,
    /// STATUS: the plugin cannot serve ADDs now.
    NotAvailable = 50,
    /// STATUS: the plugin's network is not available.
    NetworkNotAvailable = 51,
    /// A VF setting the driver rejected, or a kernel operation that failed.
    Dataplane = 100,
    /// The VF belongs to another pod / is not free.
    VfBusy = 101,
    /// IPAM failed.
    Ipam = 102,
}

/// An error as the CNI spec prints it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniError {
    pub code: ErrorCode,
    pub msg: String,
    pub details: String,
}

impl CniError {
    pub fn new(code: ErrorCode, msg: impl Into<String>) -> Self {
        CniError {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    pub fn config(msg: impl Into<String>) -> Self {
        CniError::new(ErrorCode::InvalidConfig, msg)
    }

    /// The error JSON for stdout, in the caller's version (or the newest when unknown).
    pub fn to_json(&self, version: &str) -> String {
        #[derive(Serialize)]
        struct Out<'a> {
            #[serde(rename = "cniVersion")]
            cni_version: &'a str,
            code: u32,
            msg: &'a str,
            #[serde(skip_serializing_if = "str::is_empty")]
            details: &'a str,
        }
        serde_json::to_string(&Out {
            cni_version: version,
            code: self.code as u32,
            msg: &self.msg,
            details: &self.details,
        })
        .unwrap_or_else(|_| format!("{{\"code\":{},\"msg\":\"error\"}}", self.code as u32))
    }
}

impl fmt::Display for CniError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.msg)?;
        if !self.details.is_empty() {
            write!(f, " ({})", self.details)?;
        }
        Ok(())
    }
}

impl std::error::Error for CniError {}

/// What VERSION prints.
pub fn version_json(version: &str) -> String {
    serde_json::json!({"cniVersion": version, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_errors() {
        assert_eq!(CniVersion::parse("0.4.0").unwrap(), CniVersion::V040);
        assert_eq!(CniVersion::parse("0.2.0").unwrap(), CniVersion::V020);
        let e = CniVersion::parse("0.2.9").unwrap_err();
        assert_eq!(e.code, ErrorCode::IncompatibleVersion);
        let j: serde_json::Value = serde_json::from_str(&e.to_json("1.1.0")).unwrap();
        assert_eq!(j["code"], 1);
        assert_eq!(j["cniVersion"], "1.1.0");
        assert!(j["msg"].as_str().unwrap().contains("0.2.9"));
        assert!(j.get("details").is_none());
        assert!(CniVersion::V030 < CniVersion::V110);
        assert_eq!(
            Command::parse("CHECK").unwrap().min_version(),
            CniVersion::V040
        );
        assert_eq!(
            Command::parse("add").unwrap_err().code,
            ErrorCode::InvalidEnv
        );
        let v: serde_json::Value = serde_json::from_str(&version_json("1.0.0")).unwrap();
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 7);
    }
}
