//! Field and label selectors as the API server parses them (`?fieldSelector=`,
//! `?labelSelector=`).

use serde_json::Value;

/// One `key OP value` term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    pub field: String,
    pub equal: bool,
    pub value: String,
}

/// Parses `a=b,c!=d` (also `==`). `supported` lists the fields this resource can be selected
/// by; anything else is the API server's "field label not supported" error.
pub fn parse_fields(text: &str, supported: &[&str]) -> Result<Vec<FieldTerm>, String> {
    let mut out = vec![];
    for term in text.split(',').filter(|t| !t.is_empty()) {
        let (field, equal, value) = if let Some((k, v)) = term.split_once("!=") {
            (k, false, v)
        } else if let Some((k, v)) = term.split_once("==") {
            (k, true, v)
        } else if let Some((k, v)) = term.split_once('=') {
            (k, true, v)
        } else {
            return Err(format!(
                "invalid selector: '{text}'; can't understand '{term}'"
            ));
        };
        if !supported.contains(&field) {
            return Err(format!("field label not supported: {field}"));
        }
        out.push(FieldTerm {
            field: field.into(),
            equal,
            value: value.into(),
        });
    }
    Ok(out)
}

/// The string at a dotted path (`spec.pool.name`); absent is "".
pub fn field_value(object: &Value, field: &str) -> String {
    let mut v = object;
    for part in field.split('.') {
        match v.get(part) {
            Some(next) => v = next,
            None => return String::new(),
        }
    }
    match v {
        Value::String(s) => s.clone(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

pub fn fields_match(object: &Value, terms: &[FieldTerm]) -> bool {
    terms
        .iter()
        .all(|t| (field_value(object, &t.field) == t.value) == t.equal)
}

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelTerm {
    Equal(String, String),
    NotEqual(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

/// Splits on commas outside parentheses.
fn split_terms(text: &str) -> Vec<&str> {
    let (mut out, mut depth, mut start) = (vec![], 0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&text[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .collect()
}

fn set(values: &str) -> Result<Vec<String>, String> {
    let inner = values
        .trim()
        .strip_prefix('(')
        .and_then(|v| v.strip_suffix(')'))
        .ok_or_else(|| format!("expected a set in parentheses, got {values:?}"))?;
    Ok(inner.split(',').map(|v| v.trim().to_string()).collect())
}

/// Parses `a=b`, `a!=b`, `a in (x,y)`, `a notin (x)`, `a`, `!a`.
pub fn parse_labels(text: &str) -> Result<Vec<LabelTerm>, String> {
    split_terms(text)
        .into_iter()
        .map(|t| {
            if let Some(k) = t.strip_prefix('!') {
                return Ok(LabelTerm::NotExists(k.trim().into()));
            }
            if let Some((k, v)) = t.split_once(" notin ") {
                return Ok(LabelTerm::NotIn(k.trim().into(), set(v)?));
            }
            if let Some((k, v)) = t.split_once(" in ") {
                return Ok(LabelTerm::In(k.trim().into(), set(v)?));
            }
            if let Some((k, v)) = t.split_once("!=") {
                return Ok(LabelTerm::NotEqual(k.trim().into(), v.trim().into()));
            }
            if let Some((k, v)) = t.split_once("==").or_else(|| t.split_once('=')) {
                return Ok(LabelTerm::Equal(k.trim().into(), v.trim().into()));
            }
            if t.contains(char::is_whitespace) {
                return Err(format!("unable to parse requirement: {t:?}"));
            }
            Ok(LabelTerm::Exists(t.into()))
        })
        .collect()
}

pub fn labels_match(object: &Value, terms: &[LabelTerm]) -> bool {
    let label = |k: &str| object["metadata"]["labels"][k].as_str().map(str::to_string);
    terms.iter().all(|t| match t {
        LabelTerm::Equal(k, v) => label(k).as_deref() == Some(v),
        // As in Kubernetes: "!=" also matches objects without the label.
        LabelTerm::NotEqual(k, v) => label(k).as_deref() != Some(v),
        LabelTerm::In(k, vs) => label(k).is_some_and(|l| vs.contains(&l)),
        LabelTerm::NotIn(k, vs) => label(k).is_none_or(|l| !vs.contains(&l)),
        LabelTerm::Exists(k) => label(k).is_some(),
        LabelTerm::NotExists(k) => label(k).is_none(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors() {
        let o = json!({"metadata": {"labels": {"a": "1", "b": "x"}}, "spec": {"nodeName": "n1", "pool": {"name": "p"}}});
        let f = parse_fields(
            "spec.nodeName=n1,spec.pool.name!=q",
            &["spec.nodeName", "spec.pool.name"],
        )
        .unwrap();
        assert!(fields_match(&o, &f));
        assert!(!fields_match(
            &o,
            &parse_fields("spec.nodeName==n2", &["spec.nodeName"]).unwrap()
        ));
        assert_eq!(
            parse_fields("spec.other=1", &["spec.nodeName"]).unwrap_err(),
            "field label not supported: spec.other"
        );
        for (sel, want) in [
            ("a=1", true),
            ("a=2", false),
            ("a!=2", true),
            ("c!=2", true),
            ("a in (1,3)", true),
            ("b notin (x)", false),
            ("a,b", true),
            ("!c", true),
            ("!a", false),
            ("a=1,b in (y, x)", true),
        ] {
            assert_eq!(labels_match(&o, &parse_labels(sel).unwrap()), want, "{sel}");
        }
        assert!(parse_labels("a b").is_err());
    }
}
