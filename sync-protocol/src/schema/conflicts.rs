//! Fields with concurrent values.
//!
//! When two replicas set the same field while apart, Automerge keeps both
//! values and shows the same one everywhere. These are the fields a branch
//! secretary must look at; both the server (to count them) and the device
//! SDK (to show and resolve them) find them here.

use automerge::{ObjId, ObjType, ReadDoc, ScalarValue, Value};

/// One conflicted field: its path inside the record, and every value (in
/// Automerge's order, the shown value last) with the id of the op that set it.
#[derive(Debug, Clone, PartialEq)]
pub struct ConflictedField {
    pub path: Vec<String>,
    pub values: Vec<(String, ObjId)>,
}

/// How a value reads to a person.
pub fn display_value<D: ReadDoc>(doc: &D, value: &Value<'_>, id: &ObjId) -> String {
    match value {
        Value::Scalar(s) => match s.as_ref() {
            ScalarValue::Str(s) => s.to_string(),
            other => other.to_string(),
        },
        Value::Object(ObjType::Text) => doc.text(id).unwrap_or_default(),
        Value::Object(_) => "{…}".into(),
    }
}

/// How deep the walk goes into a record's nested maps. The schema nests
/// two or three levels; a device can nest thousands, and an unbounded
/// recursion would overflow a thread's stack (an abort, which no
/// `catch_unwind` stops) on a message of a few kilobytes.
pub const MAX_RECORD_DEPTH: usize = 16;

/// Every conflicted field in the map `obj` and the maps nested in it (to
/// [`MAX_RECORD_DEPTH`] levels).
pub fn conflicted_fields<D: ReadDoc>(doc: &D, obj: &ObjId) -> Vec<ConflictedField> {
    let mut found = Vec::new();
    walk(doc, obj, &mut Vec::new(), &mut found);
    found
}

fn walk<D: ReadDoc>(doc: &D, obj: &ObjId, path: &mut Vec<String>, out: &mut Vec<ConflictedField>) {
    for key in doc.keys(obj) {
        let Ok(values) = doc.get_all(obj, key.as_str()) else {
            continue;
        };
        if values.len() > 1 {
            let mut field = path.clone();
            field.push(key.clone());
            out.push(ConflictedField {
                path: field,
                values: values
                    .iter()
                    .map(|(v, id)| (display_value(doc, v, id), id.clone()))
                    .collect(),
            });
        }
        if let Ok(Some((Value::Object(ObjType::Map), child))) = doc.get(obj, key.as_str())
            && path.len() < MAX_RECORD_DEPTH
        {
            path.push(key.clone());
            walk(doc, &child, path, out);
            path.pop();
        }
    }
}
