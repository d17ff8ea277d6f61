//! A part of a document read into memory, for the two places that need a
//! whole value rather than a field: showing a map-valued conflict (the
//! `migrant` card two devices both added) as JSON, and writing the kept map
//! back as a fresh copy; and the record a correction note keeps as it was.

use std::collections::BTreeMap;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value};

/// How deep a value is copied. The schema nests two or three levels; the
/// bound keeps a hostile document from overflowing the stack.
const MAX_DEPTH: usize = 16;

/// A value with everything under it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Node {
    Scalar(ScalarValue),
    Text(String),
    Map(BTreeMap<String, Node>),
    List(Vec<Node>),
}

impl Node {
    /// Reads the value `value` (whose object or op id is `id`) and, for an
    /// object, everything in it.
    pub fn read<D: ReadDoc>(doc: &D, value: &Value<'_>, id: &ObjId) -> Node {
        Self::read_at(doc, value, id, 0)
    }

    fn read_at<D: ReadDoc>(doc: &D, value: &Value<'_>, id: &ObjId, depth: usize) -> Node {
        match value {
            Value::Scalar(s) => Node::Scalar(s.as_ref().clone()),
            Value::Object(ObjType::Text) => Node::Text(doc.text(id).unwrap_or_default()),
            Value::Object(_) if depth >= MAX_DEPTH => Node::Scalar(ScalarValue::Null),
            Value::Object(ObjType::Map | ObjType::Table) => Node::Map(
                doc.keys(id)
                    .filter_map(|key| match doc.get(id, key.as_str()) {
                        Ok(Some((value, child))) => {
                            let node = Self::read_at(doc, &value, &child, depth + 1);
                            Some((key, node))
                        }
                        _ => None,
                    })
                    .collect(),
            ),
            Value::Object(ObjType::List) => Node::List(
                (0..doc.length(id))
                    .filter_map(|i| match doc.get(id, i) {
                        Ok(Some((value, child))) => {
                            Some(Self::read_at(doc, &value, &child, depth + 1))
                        }
                        _ => None,
                    })
                    .collect(),
            ),
        }
    }

    /// The value at `key` of the map `obj`, if any.
    pub fn read_key<D: ReadDoc>(doc: &D, obj: &ObjId, key: &str) -> Option<Node> {
        match doc.get(obj, key) {
            Ok(Some((value, id))) => Some(Node::read(doc, &value, &id)),
            _ => None,
        }
    }

    pub fn is_map(&self) -> bool {
        matches!(self, Node::Map(_))
    }

    /// How a person reads it: JSON, with text as a JSON string.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::Value as J;
        match self {
            Node::Text(t) => J::String(t.clone()),
            Node::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), v.to_json())).collect()),
            Node::List(l) => J::Array(l.iter().map(Node::to_json).collect()),
            Node::Scalar(s) => match s {
                ScalarValue::Str(s) => J::String(s.to_string()),
                ScalarValue::Int(i) => J::from(*i),
                ScalarValue::Uint(u) => J::from(*u),
                ScalarValue::Counter(c) => J::from(i64::from(c)),
                ScalarValue::Timestamp(t) => J::from(*t),
                ScalarValue::F64(f) => J::from(*f),
                ScalarValue::Boolean(b) => J::Bool(*b),
                ScalarValue::Null => J::Null,
                other => J::String(other.to_string()),
            },
        }
    }

    /// A value typed in as JSON; `None` for a JSON number too large to store.
    pub fn from_json(json: &serde_json::Value) -> Option<Node> {
        use serde_json::Value as J;
        Some(match json {
            J::Null => Node::Scalar(ScalarValue::Null),
            J::Bool(b) => Node::Scalar(ScalarValue::Boolean(*b)),
            J::Number(n) => match (n.as_i64(), n.as_f64()) {
                (Some(i), _) => Node::Scalar(ScalarValue::Int(i)),
                (None, Some(f)) => Node::Scalar(ScalarValue::F64(f)),
                (None, None) => return None,
            },
            J::String(s) => Node::Scalar(ScalarValue::Str(s.as_str().into())),
            J::Array(items) => {
                Node::List(items.iter().map(Node::from_json).collect::<Option<_>>()?)
            }
            J::Object(map) => Node::Map(
                map.iter()
                    .map(|(k, v)| Some((k.clone(), Node::from_json(v)?)))
                    .collect::<Option<_>>()?,
            ),
        })
    }

    /// Puts the value at `key` of the map `obj` as fresh objects, which
    /// supersede every value the key had (concurrent ones included).
    pub fn put<T: Transactable>(
        &self,
        tx: &mut T,
        obj: &ObjId,
        key: &str,
    ) -> Result<(), AutomergeError> {
        match self {
            Node::Scalar(s) => tx.put(obj, key, s.clone()),
            // Text is stored as a plain string, as the schema writes it.
            Node::Text(t) => tx.put(obj, key, t.as_str()),
            Node::Map(m) => {
                let child = tx.put_object(obj, key, ObjType::Map)?;
                for (k, v) in m {
                    v.put(tx, &child, k)?;
                }
                Ok(())
            }
            Node::List(l) => {
                let child = tx.put_object(obj, key, ObjType::List)?;
                for (i, v) in l.iter().enumerate() {
                    v.insert(tx, &child, i)?;
                }
                Ok(())
            }
        }
    }

    fn insert<T: Transactable>(
        &self,
        tx: &mut T,
        list: &ObjId,
        index: usize,
    ) -> Result<(), AutomergeError> {
        match self {
            Node::Scalar(s) => tx.insert(list, index, s.clone()),
            Node::Text(t) => tx.insert(list, index, t.as_str()),
            Node::Map(m) => {
                let child = tx.insert_object(list, index, ObjType::Map)?;
                for (k, v) in m {
                    v.put(tx, &child, k)?;
                }
                Ok(())
            }
            Node::List(l) => {
                let child = tx.insert_object(list, index, ObjType::List)?;
                for (i, v) in l.iter().enumerate() {
                    v.insert(tx, &child, i)?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use automerge::{AutoCommit, ROOT};

    use super::*;

    #[test]
    fn a_map_is_copied_whole_and_reads_back_the_same() -> Result<(), Box<dyn std::error::Error>> {
        let mut doc = AutoCommit::new();
        let card = doc.put_object(ROOT, "migrant", ObjType::Map)?;
        doc.put(&card, "workplace", "深圳")?;
        doc.put(&card, "months", 3i64)?;
        let tags = doc.put_object(&card, "tags", ObjType::List)?;
        doc.insert(&tags, 0, "建筑")?;
        let original = Node::read_key(&doc, &ROOT, "migrant").ok_or("no card")?;
        assert_eq!(
            original.to_json(),
            serde_json::json!({"workplace": "深圳", "months": 3, "tags": ["建筑"]})
        );

        original.put(&mut doc, &ROOT, "copy")?;
        assert_eq!(
            Node::read_key(&doc, &ROOT, "copy").ok_or("no copy")?,
            original
        );
        let (_, copy) = doc.get(ROOT, "copy")?.ok_or("no copy")?;
        assert_ne!(copy, card, "a fresh object, not the old one");
        Ok(())
    }

    #[test]
    fn json_typed_in_becomes_typed_values() -> Result<(), Box<dyn std::error::Error>> {
        let node =
            Node::from_json(&serde_json::json!({"a": 1, "b": "x", "c": true})).ok_or("no node")?;
        let Node::Map(m) = node else { panic!("a map") };
        assert_eq!(m["a"], Node::Scalar(ScalarValue::Int(1)));
        assert_eq!(m["b"], Node::Scalar(ScalarValue::Str("x".into())));
        assert_eq!(m["c"], Node::Scalar(ScalarValue::Boolean(true)));
        Ok(())
    }
}
