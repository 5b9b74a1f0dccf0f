//! The API server's validation of ResourceSlices (`resource.k8s.io/v1`), as far as a node's
//! publisher can get it wrong: each failure is a (field, reason, message) cause of a 422.

use serde_json::Value;
use std::collections::BTreeSet;

/// One cause of an Invalid status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cause {
    pub field: String,
    pub reason: &'static str,
    pub message: String,
}

fn cause(field: impl Into<String>, reason: &'static str, message: impl Into<String>) -> Cause {
    Cause {
        field: field.into(),
        reason,
        message: message.into(),
    }
}

pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

/// A label key: `[<DNS subdomain>/]<name>`, the name at most 63 of `[-_.A-Za-z0-9]`, starting
/// and ending alphanumeric.
fn is_label_name(key: &str) -> bool {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let alnum = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && alnum(name.chars().next())
        && alnum(name.chars().last());
    name_ok && prefix.is_none_or(is_dns_subdomain)
}

/// `<domain>/<C identifier of at most 32 characters>` or just the identifier.
fn is_qualified_attribute(name: &str) -> bool {
    let (domain, id) = match name.rsplit_once('/') {
        Some((d, id)) => (Some(d), id),
        None => (None, name),
    };
    let id_ok = !id.is_empty()
        && id.len() <= 32
        && id.starts_with(|c: char| c.is_ascii_alphabetic())
        && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    id_ok && domain.is_none_or(is_dns_subdomain)
}

fn attribute(path: &str, v: &Value, out: &mut Vec<Cause>) {
    let Some(m) = v.as_object() else {
        out.push(cause(path, "FieldValueInvalid", "must be an object"));
        return;
    };
    if m.len() != 1 {
        out.push(cause(
            path,
            "FieldValueInvalid",
            "exactly one value must be specified",
        ));
        return;
    }
    for (kind, value) in m {
        let ok = match kind.as_str() {
            "int" => value.is_i64(),
            "bool" => value.is_boolean(),
            "string" | "version" => value.as_str().is_some_and(|s| s.len() <= 64),
            _ => false,
        };
        if !ok {
            out.push(cause(
                format!("{path}.{kind}"),
                "FieldValueInvalid",
                format!("{value}: not a valid {kind} value (strings at most 64 characters)"),
            ));
        }
    }
}

/// Validation of a ResourceSlice's spec (the object's other parts are checked by the caller).
pub fn resource_slice(spec: &Value) -> Vec<Cause> {
    let mut out = vec![];
    let driver = spec["driver"].as_str().unwrap_or_default();
    if !is_dns_subdomain(driver) {
        out.push(cause(
            "spec.driver",
            "FieldValueInvalid",
            "a lowercase RFC 1123 subdomain is required",
        ));
    }
    let pool = &spec["pool"];
    if pool["name"].as_str().is_none_or(str::is_empty) {
        out.push(cause(
            "spec.pool.name",
            "FieldValueRequired",
            "Required value",
        ));
    }
    if pool["generation"].as_i64().is_none_or(|g| g < 0) {
        out.push(cause(
            "spec.pool.generation",
            "FieldValueInvalid",
            "must be greater than or equal to 0",
        ));
    }
    if pool["resourceSliceCount"].as_i64().is_none_or(|c| c <= 0) {
        out.push(cause(
            "spec.pool.resourceSliceCount",
            "FieldValueInvalid",
            "must be greater than zero",
        ));
    }
    let set = [
        spec.get("nodeName")
            .is_some_and(|v| v.as_str().is_some_and(|s| !s.is_empty())),
        spec.get("nodeSelector").is_some_and(|v| !v.is_null()),
        spec["allNodes"].as_bool() == Some(true),
        spec["perDeviceNodeSelection"].as_bool() == Some(true),
    ];
    if set.iter().filter(|s| **s).count() != 1 {
        out.push(cause(
            "spec",
            "FieldValueInvalid",
            "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` is required",
        ));
    }
    let devices = spec["devices"].as_array().cloned().unwrap_or_default();
    let tainted = devices
        .iter()
        .any(|d| d["taints"].as_array().is_some_and(|t| !t.is_empty()));
    let max = if tainted { 64 } else { 128 };
    if devices.len() > max {
        out.push(cause(
            "spec.devices",
            "FieldValueTooMany",
            format!("Too many: {}: must have at most {max} items", devices.len()),
        ));
    }
    let mut names = BTreeSet::new();
    for (i, d) in devices.iter().enumerate() {
        let at = format!("spec.devices[{i}]");
        let name = d["name"].as_str().unwrap_or_default();
        if !is_dns_label(name) {
            out.push(cause(
                format!("{at}.name"),
                "FieldValueInvalid",
                format!("{name:?}: a lowercase RFC 1123 label is required"),
            ));
        }
        if !names.insert(name.to_string()) {
            out.push(cause(
                format!("{at}.name"),
                "FieldValueDuplicate",
                format!("Duplicate value: {name:?}"),
            ));
        }
        let attrs = d["attributes"].as_object().cloned().unwrap_or_default();
        let caps = d["capacity"].as_object().map_or(0, |c| c.len());
        if attrs.len() + caps > 32 {
            out.push(cause(
                format!("{at}.attributes"),
                "FieldValueTooMany",
                format!(
                    "Too many: {}: must have at most 32 items (attributes and capacities)",
                    attrs.len() + caps
                ),
            ));
        }
        for (k, v) in &attrs {
            let path = format!("{at}.attributes[{k}]");
            if !is_qualified_attribute(k) {
                out.push(cause(
                    &path,
                    "FieldValueInvalid",
                    "a C identifier of at most 32 characters, optionally under a DNS domain",
                ));
            }
            attribute(&path, v, &mut out);
        }
        let taints = d["taints"].as_array().cloned().unwrap_or_default();
        if taints.len() > 16 {
            out.push(cause(
                format!("{at}.taints"),
                "FieldValueTooMany",
                format!("Too many: {}: must have at most 16 items", taints.len()),
            ));
        }
        for (j, t) in taints.iter().enumerate() {
            let effect = t["effect"].as_str().unwrap_or_default();
            if !["NoSchedule", "NoExecute", "None"].contains(&effect) {
                out.push(cause(
                    format!("{at}.taints[{j}].effect"),
                    "FieldValueNotSupported",
                    format!("Unsupported value: {effect:?}: supported values: \"NoExecute\", \"NoSchedule\", \"None\""),
                ));
            }
            if t["key"].as_str().is_none_or(|k| !is_label_name(k)) {
                out.push(cause(
                    format!("{at}.taints[{j}].key"),
                    "FieldValueInvalid",
                    "must be a label name",
                ));
            }
        }
    }
    out
}

/// Fields of a ResourceSlice that an update must not change.
pub fn resource_slice_immutable(old: &Value, new: &Value) -> Vec<Cause> {
    ["driver", "nodeName"]
        .iter()
        .map(|f| (format!("spec.{f}"), &old["spec"][f], &new["spec"][f]))
        .chain([(
            "spec.pool.name".to_string(),
            &old["spec"]["pool"]["name"],
            &new["spec"]["pool"]["name"],
        )])
        .filter(|(_, o, n)| o != n)
        .map(|(f, _, _)| cause(f, "FieldValueInvalid", "field is immutable"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slices_are_checked_like_the_api_server_does() {
        let dev = |n: &str| json!({"name": n, "attributes": {"x.io/a": {"string": "v"}}});
        let good = json!({"driver": "sriov.sriov-rs.io", "nodeName": "n", "pool": {"name": "n", "generation": 1, "resourceSliceCount": 1}, "devices": [dev("a")]});
        assert!(resource_slice(&good).is_empty());
        let mut many = good.clone();
        many["devices"] = json!((0..129).map(|i| dev(&format!("d{i}"))).collect::<Vec<_>>());
        assert_eq!(
            resource_slice(&many)[0].message,
            "Too many: 129: must have at most 128 items"
        );
        let mut tainted = good.clone();
        tainted["devices"] = json!((0..65)
            .map(|i| {
                let mut d = dev(&format!("d{i}"));
                d["taints"] = json!([{"key": "x.io/unhealthy", "effect": "NoSchedule"}]);
                d
            })
            .collect::<Vec<_>>());
        assert_eq!(resource_slice(&tainted)[0].field, "spec.devices");
        let mut bad = good.clone();
        bad["devices"] = json!([dev("0000:3b:02.1"), {"name": "b", "attributes": {"x.io/s": {"string": "s".repeat(65)}}}]);
        bad["allNodes"] = json!(true);
        let fields: Vec<_> = resource_slice(&bad).into_iter().map(|c| c.field).collect();
        assert_eq!(
            fields,
            [
                "spec",
                "spec.devices[0].name",
                "spec.devices[1].attributes[x.io/s].string"
            ]
        );
        let mut moved = good.clone();
        moved["nodeName"] = json!("other");
        assert_eq!(
            resource_slice_immutable(&json!({"spec": good}), &json!({"spec": moved}))[0].field,
            "spec.nodeName"
        );
    }
}
