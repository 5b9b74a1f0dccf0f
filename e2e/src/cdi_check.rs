//! An independent checker of CDI spec files, for the tests: the CDI specification's rules
//! (SPEC.md and its JSON schema, cncf-tags/container-device-interface) and the extra checks its
//! reference library makes when a runtime loads a spec, written against the raw JSON (not our
//! `sriov::cdi` types, so a mistake there cannot hide here).
//!
//! Checked: only the specification's fields (the library refuses unknown ones), their JSON types
//! and required fields; `cdiVersion` a released version and not older than the fields used
//! require (0.5.0: `hostPath`, device names starting with a digit; 0.6.0: annotations, a dot in
//! the class; 0.7.0: `intelRdt`, `additionalGids`; 1.1.0: `netDevices`); `kind` =
//! `vendor/class` (vendor a DNS subdomain, both names letter-first, alphanumeric-last); at least
//! one device, names unique and made of letters, digits, `_-.:`; every device's edits non-empty;
//! `env` entries `NAME=VALUE`; device nodes with a path, a type among b/c/u/p, permissions of
//! r/w/m; mounts with both paths; hooks with a known name and a path.

use serde_json::{Map, Value};

const VERSIONS: [&str; 10] = [
    "0.1.0", "0.2.0", "0.3.0", "0.4.0", "0.5.0", "0.6.0", "0.7.0", "0.8.0", "1.0.0", "1.1.0",
];

fn index(v: &str) -> Option<usize> {
    VERSIONS.iter().position(|x| *x == v)
}

fn only_keys(obj: &Map<String, Value>, at: &str, allowed: &[&str]) -> Result<(), String> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!("{at}: unknown field {k:?}"));
        }
    }
    Ok(())
}

fn object<'a>(v: &'a Value, at: &str) -> Result<&'a Map<String, Value>, String> {
    v.as_object().ok_or_else(|| format!("{at}: not an object"))
}

fn string<'a>(obj: &'a Map<String, Value>, key: &str, at: &str) -> Result<Option<&'a str>, String> {
    match obj.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("{at}.{key}: not a string")),
    }
}

fn strings<'a>(obj: &'a Map<String, Value>, key: &str, at: &str) -> Result<Vec<&'a str>, String> {
    match obj.get(key) {
        None => Ok(vec![]),
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str()
                    .ok_or_else(|| format!("{at}.{key}[{i}]: not a string"))
            })
            .collect(),
        Some(_) => Err(format!("{at}.{key}: not an array")),
    }
}

fn alnum(c: char) -> bool {
    c.is_ascii_alphanumeric()
}

fn vendor_or_class_ok(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '_' | '-' | '.'))
}

fn dns_subdomain_ok(name: &str) -> bool {
    name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| alnum(c) || c == '-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

fn device_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name.starts_with(alnum)
        && name.ends_with(alnum)
        && name
            .chars()
            .all(|c| alnum(c) || matches!(c, '_' | '-' | '.' | ':'))
}

/// The version the edits' fields need at least, or an error.
fn check_edits(v: &Value, at: &str, device_level: bool) -> Result<&'static str, String> {
    let e = object(v, at)?;
    only_keys(
        e,
        at,
        &[
            "env",
            "deviceNodes",
            "mounts",
            "hooks",
            "netDevices",
            "intelRdt",
            "additionalGids",
        ],
    )?;
    let mut need = "0.3.0";
    let mut count = 0;
    for (i, env) in strings(e, "env", at)?.into_iter().enumerate() {
        count += 1;
        if env.find('=').is_none_or(|p| p == 0) {
            return Err(format!("{at}.env[{i}]: {env:?} is not NAME=VALUE"));
        }
    }
    let list = |key: &str| -> Result<Vec<&Value>, String> {
        match e.get(key) {
            None => Ok(vec![]),
            Some(Value::Array(a)) => Ok(a.iter().collect()),
            Some(_) => Err(format!("{at}.{key}: not an array")),
        }
    };
    for (i, n) in list("deviceNodes")?.into_iter().enumerate() {
        count += 1;
        let at = format!("{at}.deviceNodes[{i}]");
        let n = object(n, &at)?;
        only_keys(
            n,
            &at,
            &[
                "path",
                "hostPath",
                "type",
                "major",
                "minor",
                "fileMode",
                "permissions",
                "uid",
                "gid",
            ],
        )?;
        match string(n, "path", &at)? {
            Some(p) if !p.is_empty() => {}
            _ => return Err(format!("{at}.path: required")),
        }
        if string(n, "hostPath", &at)?.is_some() {
            need = need.max("0.5.0");
        }
        if let Some(t) = string(n, "type", &at)? {
            if !["", "b", "c", "u", "p"].contains(&t) {
                return Err(format!("{at}.type: {t:?} is not b, c, u or p"));
            }
        }
        if let Some(p) = string(n, "permissions", &at)? {
            if p != "none" && !p.chars().all(|c| matches!(c, 'r' | 'w' | 'm')) {
                return Err(format!("{at}.permissions: {p:?} is not made of r, w, m"));
            }
        }
        for k in ["major", "minor", "fileMode", "uid", "gid"] {
            if n.get(k).is_some_and(|v| !v.is_i64() && !v.is_u64()) {
                return Err(format!("{at}.{k}: not an integer"));
            }
        }
        for k in ["uid", "gid"] {
            if n.get(k)
                .and_then(Value::as_u64)
                .is_some_and(|v| v > u64::from(u32::MAX))
            {
                return Err(format!("{at}.{k}: not a uint32"));
            }
        }
    }
    for (i, m) in list("mounts")?.into_iter().enumerate() {
        count += 1;
        let at = format!("{at}.mounts[{i}]");
        let m = object(m, &at)?;
        only_keys(m, &at, &["hostPath", "containerPath", "options", "type"])?;
        for k in ["hostPath", "containerPath"] {
            if string(m, k, &at)?.is_none() {
                return Err(format!("{at}.{k}: required"));
            }
        }
        strings(m, "options", &at)?;
        string(m, "type", &at)?;
    }
    for (i, h) in list("hooks")?.into_iter().enumerate() {
        count += 1;
        let at = format!("{at}.hooks[{i}]");
        let h = object(h, &at)?;
        only_keys(h, &at, &["hookName", "path", "args", "env", "timeout"])?;
        let name = string(h, "hookName", &at)?.unwrap_or("");
        if ![
            "prestart",
            "createRuntime",
            "createContainer",
            "startContainer",
            "poststart",
            "poststop",
        ]
        .contains(&name)
        {
            return Err(format!("{at}.hookName: {name:?} is not a hook"));
        }
        if string(h, "path", &at)?.is_none_or(str::is_empty) {
            return Err(format!("{at}.path: required"));
        }
    }
    if !list("netDevices")?.is_empty() {
        count += 1;
        need = need.max("1.1.0");
    }
    if e.contains_key("intelRdt") || !list("additionalGids")?.is_empty() {
        count += 1;
        need = need.max("0.7.0");
    }
    if device_level && count == 0 {
        return Err(format!("{at}: a device's edits must not be empty"));
    }
    Ok(need)
}

/// Checks one spec file's content; returns the parsed JSON.
pub fn check_spec(content: &[u8]) -> Result<Value, String> {
    let v: Value = serde_json::from_slice(content).map_err(|e| format!("not JSON: {e}"))?;
    let top = object(&v, "spec")?;
    only_keys(
        top,
        "spec",
        &[
            "cdiVersion",
            "kind",
            "annotations",
            "devices",
            "containerEdits",
        ],
    )?;
    let version = string(top, "cdiVersion", "spec")?.ok_or("cdiVersion: required")?;
    let version = version.strip_prefix('v').unwrap_or(version);
    let have = index(version).ok_or(format!("cdiVersion {version:?}: not a released version"))?;
    let kind = string(top, "kind", "spec")?.ok_or("kind: required")?;
    let (vendor, class) = kind
        .split_once('/')
        .ok_or(format!("kind {kind:?}: not vendor/class"))?;
    if !dns_subdomain_ok(vendor) || !vendor_or_class_ok(vendor) {
        return Err(format!("kind {kind:?}: bad vendor {vendor:?}"));
    }
    if class.len() > 63 || !vendor_or_class_ok(class) || class.contains('/') {
        return Err(format!("kind {kind:?}: bad class {class:?}"));
    }
    let mut need = "0.3.0";
    if class.contains('.') || top.contains_key("annotations") {
        need = "0.6.0";
    }
    if let Some(edits) = top.get("containerEdits") {
        need = need.max(check_edits(edits, "containerEdits", false)?);
    }
    let devices = match top.get("devices") {
        Some(Value::Array(a)) if !a.is_empty() => a,
        Some(Value::Array(_)) => return Err("devices: at least one is required".into()),
        _ => return Err("devices: required array".into()),
    };
    let mut names = std::collections::HashSet::new();
    for (i, d) in devices.iter().enumerate() {
        let at = format!("devices[{i}]");
        let d = object(d, &at)?;
        only_keys(d, &at, &["name", "annotations", "containerEdits"])?;
        let name = string(d, "name", &at)?.ok_or(format!("{at}.name: required"))?;
        if !device_name_ok(name) {
            return Err(format!("{at}.name {name:?}: not a valid device name"));
        }
        if !names.insert(name) {
            return Err(format!("{at}.name {name:?}: used twice"));
        }
        if name.starts_with(|c: char| c.is_ascii_digit()) {
            need = need.max("0.5.0");
        }
        if d.contains_key("annotations") {
            need = need.max("0.6.0");
        }
        let edits = d
            .get("containerEdits")
            .ok_or(format!("{at}.containerEdits: required"))?;
        need = need.max(check_edits(edits, &format!("{at}.containerEdits"), true)?);
    }
    if index(need).is_some_and(|n| n > have) {
        return Err(format!(
            "cdiVersion {version}: the fields used need at least {need}"
        ));
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_what_the_specification_refuses() {
        let ok = br#"{"cdiVersion":"0.5.0","kind":"intel.com/net-pci","devices":[{"name":"0000:3b:02.0","containerEdits":{"env":["A=b"]}}]}"#;
        assert!(check_spec(ok).is_ok());
        for (bad, why) in [
            (
                r#"{"cdiVersion":"0.4.0","kind":"intel.com/net-pci","devices":[{"name":"0000:3b:02.0","containerEdits":{"env":["A=b"]}}]}"#,
                "need at least 0.5.0",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"intel.com/net-pci","devices":[{"name":"x","containerEdits":{}}]}"#,
                "must not be empty",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"intel.com/net-pci","devices":[]}"#,
                "at least one",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"intel.com","devices":[{"name":"x","containerEdits":{"env":["A=b"]}}]}"#,
                "vendor/class",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"intel.com/x","extra":1,"devices":[{"name":"x","containerEdits":{"env":["A=b"]}}]}"#,
                "unknown field",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"intel.com/x","devices":[{"name":"x","containerEdits":{"env":["=b"]}}]}"#,
                "NAME=VALUE",
            ),
            (
                r#"{"cdiVersion":"0.5.0","kind":"intel.com/x","devices":[{"name":"x","containerEdits":{"deviceNodes":[{"path":"/dev/x","permissions":"rwx"}]}}]}"#,
                "r, w, m",
            ),
        ] {
            let e = check_spec(bad.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
