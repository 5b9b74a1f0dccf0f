//! Server-side apply and JSON merge patch on plain JSON objects.
//!
//! Apply follows the API server's rules for the fields our components touch: each field
//! manager owns the fields it applied; applying again with fewer fields removes the ones it
//! no longer names (unless another manager also owns them); a field another manager owns with a
//! different value is a conflict unless the apply is forced (then ownership moves). Maps merge
//! key by key; the associative lists of the types served (`status.devices` of a ResourceClaim by
//! driver/pool/device/shareID, `status.reservedFor` by uid, `conditions` by type,
//! `metadata.ownerReferences` by uid) merge item by item; every other list is atomic (as
//! `spec.devices` of a ResourceSlice is).

use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};

/// A field's path; list items of associative lists are named by their keys (`[uid=..]`).
pub type FieldPath = Vec<String>;

/// Fields owned per manager.
pub type Managers = BTreeMap<String, BTreeSet<FieldPath>>;

fn list_keys(path: &[String]) -> Option<&'static [&'static str]> {
    let p: Vec<&str> = path.iter().map(String::as_str).collect();
    match p.as_slice() {
        ["status", "devices"] => Some(&["driver", "pool", "device", "shareID"]),
        ["status", "reservedFor"] | ["metadata", "ownerReferences"] => Some(&["uid"]),
        [.., "conditions"] => Some(&["type"]),
        _ => None,
    }
}

fn item_key(item: &Value, keys: &[&str]) -> String {
    let parts: Vec<String> = keys
        .iter()
        .filter_map(|k| {
            item.get(*k)
                .map(|v| format!("{k}={}", v.as_str().unwrap_or(&v.to_string())))
        })
        .collect();
    format!("[{}]", parts.join(","))
}

/// Identity fields nobody owns.
fn ignored(path: &[String]) -> bool {
    matches!(
        path.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        ["apiVersion"]
            | ["kind"]
            | [
                "metadata",
                "name"
                    | "namespace"
                    | "resourceVersion"
                    | "uid"
                    | "managedFields"
                    | "creationTimestamp"
                    | "generation"
            ]
    )
}

/// The leaf fields `v` sets, under `prefix`.
pub fn fields(v: &Value, prefix: &FieldPath, out: &mut BTreeSet<FieldPath>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, child) in m {
                let mut p = prefix.clone();
                p.push(k.clone());
                if !ignored(&p) {
                    fields(child, &p, out);
                }
            }
        }
        Value::Array(items) if list_keys(prefix).is_some() => {
            let keys = list_keys(prefix).unwrap_or(&[]);
            for item in items {
                let mut p = prefix.clone();
                p.push(item_key(item, keys));
                // The item's keys are part of it even when it sets nothing else.
                out.insert(p.clone());
                fields(item, &p, out);
            }
        }
        _ => {
            out.insert(prefix.clone());
        }
    }
}

/// The value at `path` (following associative-list keys).
pub fn get<'a>(v: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = v;
    for (i, seg) in path.iter().enumerate() {
        cur = if seg.starts_with('[') {
            let keys = list_keys(&path[..i])?;
            cur.as_array()?
                .iter()
                .find(|it| &item_key(it, keys) == seg)?
        } else {
            cur.get(seg)?
        };
    }
    Some(cur)
}

fn remove(v: &mut Value, path: &[String]) {
    let Some((last, parent)) = path.split_last() else {
        return;
    };
    let mut cur = v;
    for (i, seg) in parent.iter().enumerate() {
        let next = if seg.starts_with('[') {
            let Some(keys) = list_keys(&parent[..i]) else {
                return;
            };
            cur.as_array_mut()
                .and_then(|a| a.iter_mut().find(|it| &item_key(it, keys) == seg))
        } else {
            cur.get_mut(seg)
        };
        match next {
            Some(n) => cur = n,
            None => return,
        }
    }
    if last.starts_with('[') {
        if let (Some(keys), Some(a)) = (list_keys(parent), cur.as_array_mut()) {
            a.retain(|it| &item_key(it, keys) != last);
        }
    } else if let Some(m) = cur.as_object_mut() {
        m.remove(last);
    }
}

/// Merges `applied` into `target` (maps by key, associative lists by item key).
fn merge(target: &mut Value, applied: &Value, path: &FieldPath) {
    match (target, applied) {
        (Value::Object(t), Value::Object(a)) => {
            for (k, av) in a {
                let mut p = path.clone();
                p.push(k.clone());
                match t.get_mut(k) {
                    Some(tv) => merge(tv, av, &p),
                    None => {
                        t.insert(k.clone(), av.clone());
                    }
                }
            }
        }
        (Value::Array(t), Value::Array(a)) if list_keys(path).is_some() => {
            let keys = list_keys(path).unwrap_or(&[]);
            for item in a {
                let key = item_key(item, keys);
                match t.iter_mut().find(|it| item_key(it, keys) == key) {
                    Some(existing) => {
                        let mut p = path.clone();
                        p.push(key);
                        merge(existing, item, &p);
                    }
                    None => t.push(item.clone()),
                }
            }
        }
        (t, a) => *t = a.clone(),
    }
}

/// A conflict: the fields and who owns them.
#[derive(Debug)]
pub struct Conflicts(pub Vec<(String, FieldPath)>);

impl std::fmt::Display for Conflicts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self
            .0
            .iter()
            .map(|(m, p)| format!("conflict with \"{m}\": .{}", p.join(".")))
            .collect();
        write!(
            f,
            "Apply failed with {} conflict(s): {}",
            list.len(),
            list.join("; ")
        )
    }
}

/// Applies `applied` as `manager` onto `object`, updating `managers`.
pub fn apply(
    object: &mut Value,
    applied: &Value,
    manager: &str,
    force: bool,
    managers: &mut Managers,
) -> Result<(), Conflicts> {
    let mut new_fields = BTreeSet::new();
    fields(applied, &vec![], &mut new_fields);
    let mut conflicts = vec![];
    for p in &new_fields {
        for (other, owned) in managers.iter() {
            if other != manager && owned.contains(p) && get(object, p) != get(applied, p) {
                conflicts.push((other.clone(), p.clone()));
            }
        }
    }
    if !conflicts.is_empty() && !force {
        return Err(Conflicts(conflicts));
    }
    for (other, p) in &conflicts {
        if let Some(owned) = managers.get_mut(other) {
            owned.remove(p);
        }
    }
    let old = managers.remove(manager).unwrap_or_default();
    for p in old.difference(&new_fields) {
        let shared = managers.values().any(|o| o.contains(p));
        if !shared {
            remove(object, p);
            // A map left empty goes too (its fields were all that set it).
            for end in (1..p.len()).rev() {
                let parent = &p[..end];
                if get(object, parent).is_some_and(|v| v.as_object().is_some_and(Map::is_empty)) {
                    remove(object, parent);
                } else {
                    break;
                }
            }
        }
    }
    merge(object, applied, &vec![]);
    managers.insert(manager.to_string(), new_fields);
    managers.retain(|_, owned| !owned.is_empty());
    Ok(())
}

/// Records an update (PUT, merge patch) by `manager`: it owns every field it set that differs
/// from before, and nobody else does any more.
pub fn record_update(before: &Value, after: &Value, manager: &str, managers: &mut Managers) {
    let mut now = BTreeSet::new();
    fields(after, &vec![], &mut now);
    let changed: BTreeSet<FieldPath> = now
        .into_iter()
        .filter(|p| get(before, p) != get(after, p))
        .collect();
    for owned in managers.values_mut() {
        owned.retain(|p| !changed.contains(p) && get(after, p).is_some());
    }
    managers
        .entry(manager.to_string())
        .or_default()
        .extend(changed);
    managers.retain(|_, owned| !owned.is_empty());
}

/// RFC 7386 JSON merge patch.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = Value::Object(Map::new());
            }
            if let Some(t) = target.as_object_mut() {
                for (k, v) in p {
                    if v.is_null() {
                        t.remove(k);
                    } else {
                        merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                    }
                }
            }
        }
        other => *target = other.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn apply_merges_owns_removes_and_conflicts() {
        let mut managers = Managers::new();
        let mut obj = json!({"metadata": {"name": "c"}, "status": {}});
        let dev = |d: &str, extra: Value| {
            let mut v = json!({"driver": "x", "pool": "p", "device": d});
            merge_patch(&mut v, &extra);
            v
        };
        apply(
            &mut obj,
            &json!({"status": {"devices": [dev("a", json!({"data": 1}))]}}),
            "m1",
            false,
            &mut managers,
        )
        .unwrap();
        apply(
            &mut obj,
            &json!({"status": {"devices": [dev("b", json!({}))]}}),
            "m2",
            false,
            &mut managers,
        )
        .unwrap();
        assert_eq!(
            obj["status"]["devices"].as_array().unwrap().len(),
            2,
            "items by key merge"
        );
        // m2 sets m1's field: conflict, unless forced.
        let c = apply(
            &mut obj,
            &json!({"status": {"devices": [dev("a", json!({"data": 2}))]}}),
            "m2",
            false,
            &mut managers,
        )
        .unwrap_err();
        assert!(c.to_string().contains("conflict with \"m1\""), "{c}");
        // m1 applies again without device a: it goes; b (m2's) stays.
        apply(
            &mut obj,
            &json!({"status": {"devices": []}}),
            "m1",
            false,
            &mut managers,
        )
        .unwrap();
        assert_eq!(obj["status"]["devices"], json!([dev("b", json!({}))]));
        apply(
            &mut obj,
            &json!({"status": {"devices": [dev("b", json!({"data": 3}))]}}),
            "m1",
            true,
            &mut managers,
        )
        .unwrap();
        assert_eq!(obj["status"]["devices"][0]["data"], 3);
    }

    #[test]
    fn merge_patch_is_rfc7386() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "l": [1, 2]});
        merge_patch(&mut v, &json!({"a": {"b": null, "d": 3}, "l": [3]}));
        assert_eq!(v, json!({"a": {"c": 2, "d": 3}, "l": [3]}));
    }
}
#[cfg(test)]
mod removal_tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_map_whose_fields_are_no_longer_applied_goes() {
        let mut m = Managers::new();
        let mut o = json!({"metadata": {"name": "c"}, "status": {"allocation": {"x": 1}}});
        let e1 = json!({"status": {"devices": [{"driver": "d", "pool": "p", "device": "x", "conditions": [{"type": "Ready", "status": "True"}]}]}});
        apply(&mut o, &e1, "sc", true, &mut m).unwrap();
        let e2 = json!({"status": {"devices": [{"driver": "d", "pool": "p", "device": "x", "conditions": [{"type": "Ready", "status": "True"}], "networkData": {"interfaceName": "n", "ips": ["1.2.3.4/24"]}}]}});
        apply(&mut o, &e2, "sc", true, &mut m).unwrap();
        assert_eq!(
            o["status"]["devices"][0]["networkData"]["interfaceName"],
            "n"
        );
        apply(&mut o, &e1, "sc", true, &mut m).unwrap();
        assert!(
            o["status"]["devices"][0].get("networkData").is_none(),
            "{o}"
        );
    }
}
