//! The verbs: what each request does to the store and what it answers.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::apply::{self, Managers};
use super::selectors;
use super::validate;
use super::{
    bad_request, conflict, invalid, not_found, route, status_body, ApiError, Key, Resource, Route,
    State, Stored,
};

type Outcome = Result<(u16, Value), ApiError>;

const APPLY: &str = "application/apply-patch+yaml";
const MERGE: &str = "application/merge-patch+json";
const STRATEGIC: &str = "application/strategic-merge-patch+json";

impl State {
    pub(super) fn next_version(&mut self) -> String {
        self.resource_version += 1;
        self.resource_version.to_string()
    }

    /// Identity fields of a new object.
    pub(super) fn stamp_new(&mut self, r: Resource, object: &mut Value) {
        self.uids += 1;
        let rv = self.next_version();
        let m = &mut object["metadata"];
        m["uid"] = json!(format!("00000000-0000-4000-8000-{:012x}", self.uids));
        m["resourceVersion"] = json!(rv);
        m["creationTimestamp"] = json!(super::time::now());
        m["generation"] = json!(1);
        object["apiVersion"] = json!(r.api_version());
        object["kind"] = json!(r.kind());
    }

    pub(super) fn handle(
        &mut self,
        method: &str,
        path: &str,
        query: &BTreeMap<String, String>,
        content_type: &str,
        body: Value,
    ) -> Outcome {
        let Some(rt) = route(path) else {
            return Err(status_body(
                404,
                "NotFound",
                "the server could not find the requested resource",
                Value::Null,
            ));
        };
        match (method, &rt.name) {
            ("GET", None) => self.list(&rt, query),
            ("GET", Some(name)) => {
                let key = key(&rt, name);
                self.objects
                    .get(&key)
                    .map(|s| (200, s.object.clone()))
                    .ok_or_else(|| not_found(rt.resource, name))
            }
            ("POST", None) => self.create(&rt, query, body),
            ("PUT", Some(name)) => self.update(&rt, name, query, body),
            ("PATCH", Some(name)) => self.patch(&rt, name, query, content_type, body),
            ("DELETE", Some(name)) => self.delete(&rt, name, &body),
            ("DELETE", None) => self.delete_collection(&rt, query),
            _ => Err(status_body(
                405,
                "MethodNotAllowed",
                &format!("{method} is not supported on {path}"),
                Value::Null,
            )),
        }
    }

    fn selected(&self, rt: &Route, query: &BTreeMap<String, String>) -> Result<Vec<Key>, ApiError> {
        let fields = selectors::parse_fields(
            query.get("fieldSelector").map_or("", String::as_str),
            rt.resource.field_selectors(),
        )
        .map_err(|e| bad_request(&e))?;
        let labels = selectors::parse_labels(query.get("labelSelector").map_or("", String::as_str))
            .map_err(|e| bad_request(&e))?;
        Ok(self
            .objects
            .iter()
            .filter(|((r, ns, _), s)| {
                *r == rt.resource
                    && rt.namespace.as_ref().is_none_or(|want| want == ns)
                    && selectors::fields_match(&s.object, &fields)
                    && selectors::labels_match(&s.object, &labels)
            })
            .map(|(k, _)| k.clone())
            .collect())
    }

    fn list_body(&self, r: Resource, items: Vec<Value>) -> Value {
        // Items of a list carry no apiVersion/kind, as the real server sends them.
        let items: Vec<Value> = items
            .into_iter()
            .map(|mut o| {
                if let Some(m) = o.as_object_mut() {
                    m.remove("apiVersion");
                    m.remove("kind");
                }
                o
            })
            .collect();
        json!({"kind": format!("{}List", r.kind()), "apiVersion": r.api_version(),
               "metadata": {"resourceVersion": self.resource_version.to_string()}, "items": items})
    }

    fn list(&self, rt: &Route, query: &BTreeMap<String, String>) -> Outcome {
        let keys = self.selected(rt, query)?;
        let items = keys
            .iter()
            .filter_map(|k| self.objects.get(k))
            .map(|s| s.object.clone())
            .collect();
        Ok((200, self.list_body(rt.resource, items)))
    }

    /// Checks and normalizes an object about to be stored.
    fn admit(
        &mut self,
        r: Resource,
        name: &str,
        object: &mut Value,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        if r != Resource::ResourceSlices {
            return Ok(());
        }
        let mut causes = validate::resource_slice(&object["spec"]);
        if let Some(old) = old {
            causes.extend(validate::resource_slice_immutable(old, object));
        }
        if !causes.is_empty() {
            return Err(invalid(r, name, causes));
        }
        let drop = self.drop_device_taints;
        for d in object["spec"]["devices"]
            .as_array_mut()
            .into_iter()
            .flatten()
        {
            let Some(dm) = d.as_object_mut() else {
                continue;
            };
            if drop {
                dm.remove("taints");
                continue;
            }
            for t in dm
                .get_mut("taints")
                .and_then(Value::as_array_mut)
                .into_iter()
                .flatten()
            {
                if t.get("timeAdded").is_none() {
                    t["timeAdded"] = json!(super::time::now());
                }
            }
        }
        Ok(())
    }

    fn create(&mut self, rt: &Route, query: &BTreeMap<String, String>, mut body: Value) -> Outcome {
        let r = rt.resource;
        if !body.is_object() {
            return Err(bad_request(
                "the body of the request was in an unknown format",
            ));
        }
        let mut name = body["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if name.is_empty() {
            let Some(prefix) = body["metadata"]["generateName"].as_str() else {
                return Err(invalid(
                    r,
                    "",
                    vec![validate::Cause {
                        field: "metadata.name".into(),
                        reason: "FieldValueRequired",
                        message: "name or generateName is required".into(),
                    }],
                ));
            };
            name = format!("{prefix}{:05x}", (self.uids + 1) * 7919 % 0xfffff);
            body["metadata"]["name"] = json!(name);
        }
        if !validate::is_dns_subdomain(&name) {
            return Err(invalid(
                r,
                &name,
                vec![validate::Cause {
                    field: "metadata.name".into(),
                    reason: "FieldValueInvalid",
                    message: "a lowercase RFC 1123 subdomain is required".into(),
                }],
            ));
        }
        let ns = rt.namespace.clone().unwrap_or_default();
        if r.namespaced() {
            body["metadata"]["namespace"] = json!(ns);
        }
        let key = (r, ns, name.clone());
        if self.objects.contains_key(&key) {
            let msg = format!("{} \"{name}\" already exists", r.qualified());
            return Err(status_body(
                409,
                "AlreadyExists",
                &msg,
                json!({"name": name, "group": r.group(), "kind": r.plural()}),
            ));
        }
        // The status of an object with a status subresource starts empty.
        if r.has_status() && r != Resource::Nodes {
            if let Some(m) = body.as_object_mut() {
                m.remove("status");
            }
        }
        self.admit(r, &name, &mut body, None)?;
        self.stamp_new(r, &mut body);
        let mut managers = Managers::new();
        if let Some(m) = query.get("fieldManager") {
            apply::record_update(&Value::Null, &body, m, &mut managers);
        }
        self.objects.insert(
            key,
            Stored {
                object: body.clone(),
                managers,
            },
        );
        Ok((201, body))
    }

    /// Stores `candidate` as the new state of `key` (the object's new full form, before the
    /// subresource rules), checking the resourceVersion it names.
    fn store(
        &mut self,
        rt: &Route,
        name: &str,
        mut candidate: Value,
        managers: Managers,
    ) -> Outcome {
        let r = rt.resource;
        let key = key(rt, name);
        let Some(old) = self.objects.get(&key).map(|s| s.object.clone()) else {
            return Err(not_found(r, name));
        };
        if let Some(rv) = candidate["metadata"]["resourceVersion"].as_str() {
            if rv
                != old["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or_default()
            {
                return Err(conflict(r, name));
            }
        }
        if candidate["metadata"]["name"]
            .as_str()
            .is_some_and(|n| n != name)
        {
            return Err(bad_request(&format!(
                "the name of the object ({}) does not match the name on the URL ({name})",
                candidate["metadata"]["name"]
            )));
        }
        // The status subresource writes status only; the main resource never does.
        let mut object = if rt.status {
            let mut o = old.clone();
            o["status"] = candidate["status"].take();
            o
        } else {
            if r.has_status() {
                match old.get("status") {
                    Some(s) => candidate["status"] = s.clone(),
                    None => {
                        if let Some(m) = candidate.as_object_mut() {
                            m.remove("status");
                        }
                    }
                }
            }
            candidate
        };
        // Identity and server-set fields stay.
        for f in [
            "uid",
            "creationTimestamp",
            "generation",
            "namespace",
            "name",
        ] {
            if let Some(v) = old["metadata"].get(f) {
                object["metadata"][f] = v.clone();
            }
        }
        object["apiVersion"] = json!(r.api_version());
        object["kind"] = json!(r.kind());
        self.admit(r, name, &mut object, Some(&old))?;
        if object.get("spec") != old.get("spec") {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(1);
            object["metadata"]["generation"] = json!(g + 1);
        }
        if object == json!({}) || object.get("metadata").is_none() {
            return Err(bad_request("no metadata"));
        }
        let unchanged = {
            let mut a = object.clone();
            a["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
            a == old
        };
        if !unchanged {
            object["metadata"]["resourceVersion"] = json!(self.next_version());
        } else {
            object["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
        }
        self.objects.insert(
            key,
            Stored {
                object: object.clone(),
                managers,
            },
        );
        Ok((200, object))
    }

    fn update(
        &mut self,
        rt: &Route,
        name: &str,
        query: &BTreeMap<String, String>,
        body: Value,
    ) -> Outcome {
        let key = key(rt, name);
        if self.race > 0 && self.objects.contains_key(&key) {
            self.race -= 1;
            let rv = self.next_version();
            if let Some(s) = self.objects.get_mut(&key) {
                s.object["metadata"]["resourceVersion"] = json!(rv);
            }
        }
        let Some(stored) = self.objects.get(&key) else {
            return Err(not_found(rt.resource, name));
        };
        let mut managers = stored.managers.clone();
        let before = stored.object.clone();
        if !body.is_object() {
            return Err(bad_request(
                "the body of the request was in an unknown format",
            ));
        }
        if let Some(m) = query.get("fieldManager") {
            apply::record_update(&before, &body, m, &mut managers);
        }
        self.store(rt, name, body, managers)
    }

    fn patch(
        &mut self,
        rt: &Route,
        name: &str,
        query: &BTreeMap<String, String>,
        content_type: &str,
        body: Value,
    ) -> Outcome {
        let r = rt.resource;
        let key = key(rt, name);
        let media = content_type.split(';').next().unwrap_or_default().trim();
        match media {
            APPLY => {
                let Some(manager) = query.get("fieldManager").filter(|m| !m.is_empty()) else {
                    return Err(bad_request("PATCH requests with apply-patch content type require fieldManager"));
                };
                let force = query.get("force").map(String::as_str) == Some("true");
                let (mut object, mut managers) = match self.objects.get(&key) {
                    Some(s) => (s.object.clone(), s.managers.clone()),
                    // Apply creates; a subresource cannot.
                    None if rt.status => return Err(not_found(r, name)),
                    None => {
                        let create = Route { resource: r, namespace: rt.namespace.clone(), name: None, status: false };
                        let q = BTreeMap::from([("fieldManager".to_string(), manager.clone())]);
                        return self.create(&create, &q, body);
                    }
                };
                apply::apply(&mut object, &body, manager, force, &mut managers).map_err(|c| status_body(409, "Conflict", &c.to_string(), Value::Null))?;
                // The applied resourceVersion, if any, is a precondition; the stored one stays.
                if body["metadata"].get("resourceVersion").is_none() {
                    if let Some(m) = object["metadata"].as_object_mut() {
                        m.remove("resourceVersion");
                    }
                }
                self.store(rt, name, object, managers)
            }
            MERGE | STRATEGIC => {
                let Some(stored) = self.objects.get(&key) else {
                    return Err(not_found(r, name));
                };
                let (before, mut managers) = (stored.object.clone(), stored.managers.clone());
                let mut object = before.clone();
                let precondition = body["metadata"].get("resourceVersion").is_some();
                apply::merge_patch(&mut object, &body);
                if !precondition {
                    if let Some(m) = object["metadata"].as_object_mut() {
                        m.remove("resourceVersion");
                    }
                }
                if let Some(m) = query.get("fieldManager") {
                    apply::record_update(&before, &object, m, &mut managers);
                }
                self.store(rt, name, object, managers)
            }
            other => Err(status_body(415, "UnsupportedMediaType", &format!("the body of the request was in an unknown format - accepted media types include: {MERGE}, {STRATEGIC}, {APPLY} (got {other:?})"), Value::Null)),
        }
    }

    fn delete(&mut self, rt: &Route, name: &str, options: &Value) -> Outcome {
        let key = key(rt, name);
        let Some(stored) = self.objects.get(&key) else {
            return Err(not_found(rt.resource, name));
        };
        if let Some(rv) = options["preconditions"]["resourceVersion"].as_str() {
            if stored.object["metadata"]["resourceVersion"].as_str() != Some(rv) {
                return Err(conflict(rt.resource, name));
            }
        }
        let gone = self
            .objects
            .remove(&key)
            .map(|s| s.object)
            .unwrap_or_default();
        self.next_version();
        Ok((200, gone))
    }

    fn delete_collection(&mut self, rt: &Route, query: &BTreeMap<String, String>) -> Outcome {
        let keys = self.selected(rt, query)?;
        let gone: Vec<Value> = keys
            .iter()
            .filter_map(|k| self.objects.remove(k))
            .map(|s| s.object)
            .collect();
        if !gone.is_empty() {
            self.next_version();
        }
        Ok((200, self.list_body(rt.resource, gone)))
    }
}

fn key(rt: &Route, name: &str) -> Key {
    (
        rt.resource,
        rt.namespace.clone().unwrap_or_default(),
        name.to_string(),
    )
}
