//! Fields that two devices set to different values while offline.
//!
//! Automerge keeps both values of such a field; the document shows one (the
//! same on every replica) and remembers the other. Nothing is lost, and the
//! branch secretary decides: keep one of the values or enter another.
//!
//! Resolutions go by value, never by position: the values are read again
//! when the resolution is written, and if they are not the ones the user was
//! shown (a third device's value arrived meanwhile), nothing is written. A
//! field whose value is a map (`migrant`, `follow_up`) that two devices both
//! added is one conflict between whole maps, settled by keeping one map
//! whole (copied as a fresh map) or entering a whole new one.

use std::collections::BTreeSet;

use automerge::{ActorId, Automerge, ObjId, ObjType, ReadDoc, ScalarValue, Value};
use doorstep_protocol::DocumentId;
use doorstep_protocol::schema::{DocumentKind, conflicted_fields, display_value};

use crate::client::Client;
use crate::error::ClientError;
use crate::tree::Node;

/// One conflicted field of one record.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct Conflict {
    pub document: DocumentId,
    /// The root map, e.g. `members`.
    pub collection: String,
    /// The record's key in that map.
    pub record: String,
    /// The field inside the record, for people: nested fields joined with `.`.
    pub field: String,
    /// The same as keys, outer first (keys may themselves contain `.`).
    pub path: Vec<String>,
    /// Every concurrent value, in Automerge's order: the last one is the
    /// value every replica currently shows.
    pub values: Vec<ConflictValue>,
}

/// One of the concurrent values, with who wrote it and when.
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Record))]
pub struct ConflictValue {
    /// As a person reads it; a whole map (a `migrant` card) as JSON.
    pub value: String,
    /// The Automerge actor (hex) that wrote it.
    pub actor: String,
    /// Whether this device wrote it.
    pub mine: bool,
    /// When the change was made, seconds since the epoch (0 if unknown).
    pub at_unix_secs: i64,
    /// The operation that wrote it: what identifies this value when the
    /// conflict is resolved (two values may read the same).
    pub op: String,
}

/// How to settle a conflict. Every resolution is checked against the
/// values the user was shown ([`Conflict::values`]): if the field's values
/// changed since (a third device's value arrived by sync), nothing is
/// written and [`ClientError::ConflictChanged`] says what it holds now.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Resolution {
    /// Keep this value, one of [`Conflict::values`]; a map is kept whole.
    Keep(ConflictValue),
    /// Keep the value at this index of [`Conflict::values`] as it was read
    /// (the same as `Keep` of that value; never the index in what the field
    /// holds now).
    Choose(usize),
    /// Replace all of them with a new value: text for a plain field, a JSON
    /// object for a map-valued field (`migrant`, `follow_up`).
    Enter(String),
}

/// A typed-in value, of the type the field holds now: a number field stays
/// a number (a string there would make the record invalid), and a map field
/// takes a JSON object (a string there would break the record).
fn typed_like(field: &str, shown: Option<&Node>, text: &str) -> Result<Node, ClientError> {
    // The typed text is not quoted: it may be a name or a phone, and error
    // messages reach logs and crash reports.
    let invalid =
        |what: &str| ClientError::invalid(field, format!("the value typed is not {what}"));
    Ok(match shown {
        Some(Node::Map(_)) => {
            let json: serde_json::Value =
                serde_json::from_str(text).map_err(|_| invalid("a JSON object"))?;
            match Node::from_json(&json) {
                Some(node) if node.is_map() => node,
                _ => return Err(invalid("a JSON object")),
            }
        }
        Some(Node::Scalar(s)) => match s {
            ScalarValue::Int(_)
            | ScalarValue::Uint(_)
            | ScalarValue::F64(_)
            | ScalarValue::Counter(_) => Node::Scalar(ScalarValue::Int(
                text.trim().parse().map_err(|_| invalid("a whole number"))?,
            )),
            ScalarValue::Boolean(_) => Node::Scalar(ScalarValue::Boolean(
                text.trim().parse().map_err(|_| invalid("true or false"))?,
            )),
            _ => Node::Scalar(ScalarValue::Str(text.into())),
        },
        _ => Node::Scalar(ScalarValue::Str(text.into())),
    })
}

/// Every concurrent value of `key` in the map `obj`, as the user is shown
/// them, with each value's content. Listing and resolving both use this,
/// so what is compared is exactly what was shown.
fn current_values<D: ReadDoc>(
    doc: &D,
    obj: &ObjId,
    key: &str,
    me: &[u8],
    history: Option<&Automerge>,
) -> Result<Vec<(ConflictValue, Node)>, ClientError> {
    Ok(doc
        .get_all(obj, key)?
        .into_iter()
        .map(|(value, op)| {
            let node = Node::read(doc, &value, &op);
            let shown = match &value {
                Value::Object(ObjType::Map | ObjType::Table | ObjType::List) => {
                    node.to_json().to_string()
                }
                _ => display_value(doc, &value, &op),
            };
            let actor = match &op {
                ObjId::Id(_, actor, _) => actor.clone(),
                ObjId::Root => ActorId::from([0u8; 16]),
            };
            // Inside a transaction the history is not at hand; only the op
            // ids are compared there.
            let at_unix_secs = history
                .and_then(|doc| {
                    doc.hash_for_opid(&op)
                        .and_then(|h| doc.get_change_meta_by_hash(&h))
                })
                .map(|m| m.timestamp)
                .unwrap_or(0);
            let value = ConflictValue {
                value: shown,
                // Any of this device's actors (one per open) is "mine".
                mine: crate::client::is_own(me, &actor),
                actor: actor.to_hex_string(),
                at_unix_secs,
                op: op.to_string(),
            };
            (value, node)
        })
        .collect())
}

/// The map holding the last key of `path` (root-relative), and that key.
fn parent_of<'p, D: ReadDoc>(
    doc: &D,
    path: &[&'p str],
) -> Result<Option<(ObjId, &'p str)>, ClientError> {
    let Some((field, parents)) = path.split_last() else {
        return Ok(None);
    };
    let mut obj = automerge::ROOT;
    for key in parents {
        match doc.get(&obj, *key)? {
            Some((Value::Object(ObjType::Map), child)) => obj = child,
            _ => return Ok(None),
        }
    }
    Ok(Some((obj, field)))
}

impl Client {
    /// Every conflicted field in every document on this device.
    pub async fn conflicts(&self) -> Result<Vec<Conflict>, ClientError> {
        let me = self.inner.actor_base.clone();
        let branch = self.identity()?.branch;
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let roster = DocumentId::roster(branch);
        let mut conflicts = Vec::new();
        let mut failed = None;
        if let Some(replica) = replicas.existing(roster).await? {
            conflicts_in(
                replica.doc(),
                roster,
                DocumentKind::Roster,
                &me,
                &mut conflicts,
            )?;
        }
        self.for_each_log(replicas, |month, doc| {
            let kind = DocumentKind::MonthlyLog(month);
            let id = DocumentId::monthly_log(branch, month);
            if let Err(e) = conflicts_in(doc, id, kind, &me, &mut conflicts) {
                failed = Some(e);
            }
        })
        .await?;
        match failed {
            Some(e) => Err(e),
            None => Ok(conflicts),
        }
    }

    /// Settles a conflict with one value that supersedes all of them, on
    /// this device and, after sync, everywhere; refuses, writing nothing,
    /// if the field's values are no longer the ones in `conflict`.
    pub async fn resolve_conflict(
        &self,
        conflict: &Conflict,
        resolution: Resolution,
    ) -> Result<(), ClientError> {
        let me = self.inner.actor_base.clone();
        let keep = match &resolution {
            Resolution::Keep(value) => Some(value.clone()),
            Resolution::Choose(index) => {
                Some(conflict.values.get(*index).cloned().ok_or_else(|| {
                    ClientError::invalid(
                        &conflict.field,
                        format!("no value {index} in this conflict"),
                    )
                })?)
            }
            Resolution::Enter(_) => None,
        };
        if let Some(keep) = &keep
            && !conflict.values.iter().any(|v| v.op == keep.op)
        {
            return Err(ClientError::invalid(
                &conflict.field,
                "the value to keep is not one of this conflict's values",
            ));
        }
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let kind = replicas
            .existing(conflict.document)
            .await?
            .map(|r| r.kind)
            .ok_or(ClientError::NotFound {
                what: "document",
                id: conflict.document.to_string(),
            })?;
        let mut path: Vec<&str> = vec![conflict.collection.as_str(), conflict.record.as_str()];
        path.extend(conflict.path.iter().map(String::as_str));
        let written = replicas
            .edit(conflict.document, kind, |tx| {
                let Some((obj, field)) = parent_of(tx, &path)? else {
                    return Err(ClientError::NotFound {
                        what: "field",
                        id: conflict.field.clone(),
                    });
                };
                let current = current_values(tx, &obj, field, &me, None)?;
                let seen: BTreeSet<&str> = conflict.values.iter().map(|v| v.op.as_str()).collect();
                let now: BTreeSet<&str> = current.iter().map(|(v, _)| v.op.as_str()).collect();
                if seen != now {
                    return Err(ClientError::ConflictChanged {
                        field: conflict.field.clone(),
                        now: Vec::new(),
                    });
                }
                let value = match (&resolution, &keep) {
                    (Resolution::Enter(text), _) => {
                        typed_like(&conflict.field, current.last().map(|(_, n)| n), text)?
                    }
                    (_, Some(keep)) => current
                        .into_iter()
                        .find(|(v, _)| v.op == keep.op)
                        .map(|(_, node)| node)
                        .ok_or_else(|| ClientError::ConflictChanged {
                            field: conflict.field.clone(),
                            now: Vec::new(),
                        })?,
                    (_, None) => {
                        return Err(ClientError::invalid(&conflict.field, "nothing to keep"));
                    }
                };
                value.put(tx, &obj, field)?;
                Ok(())
            })
            .await;
        match written {
            Ok(()) => {
                self.inner.edited.notify_one();
                Ok(())
            }
            Err(ClientError::ConflictChanged { field, .. }) => {
                // Rolled back: read what the field holds now, with when
                // each value was written, for the app to show.
                let mut now = Vec::new();
                if let Some(replica) = replicas.existing(conflict.document).await?
                    && let Some((obj, key)) = parent_of(replica.doc(), &path)?
                {
                    now = current_values(replica.doc(), &obj, key, &me, Some(replica.doc()))?
                        .into_iter()
                        .map(|(v, _)| v)
                        .collect();
                }
                Err(ClientError::ConflictChanged { field, now })
            }
            Err(e) => Err(e),
        }
    }
}

/// The conflicts of one document.
fn conflicts_in(
    doc: &Automerge,
    document: DocumentId,
    kind: DocumentKind,
    me: &[u8],
    out: &mut Vec<Conflict>,
) -> Result<(), ClientError> {
    for collection in kind.collections() {
        let Ok(Some((Value::Object(ObjType::Map), coll))) = doc.get(automerge::ROOT, *collection)
        else {
            continue;
        };
        for record in doc.keys(&coll) {
            let Ok(Some((Value::Object(ObjType::Map), obj))) = doc.get(&coll, record.as_str())
            else {
                continue;
            };
            for found in conflicted_fields(doc, &obj) {
                let mut path: Vec<&str> = vec![collection, record.as_str()];
                path.extend(found.path.iter().map(String::as_str));
                let Some((parent, field)) = parent_of(doc, &path)? else {
                    continue;
                };
                let values = current_values(doc, &parent, field, me, Some(doc))?
                    .into_iter()
                    .map(|(v, _)| v)
                    .collect();
                out.push(Conflict {
                    document,
                    collection: (*collection).to_owned(),
                    record: record.clone(),
                    field: found.path.join("."),
                    path: found.path,
                    values,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use automerge::transaction::Transactable;
    use automerge::{AutoCommit, ROOT};

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    #[test]
    fn a_typed_in_value_takes_the_type_the_field_holds() -> TestResult {
        let int = Node::Scalar(ScalarValue::Int(5));
        assert_eq!(
            typed_like("aid_cash_fen", Some(&int), " 42 ")?,
            Node::Scalar(ScalarValue::Int(42))
        );
        let refused = typed_like("aid_cash_fen", Some(&int), "forty");
        assert!(
            matches!(&refused, Err(ClientError::Invalid { field, .. }) if field == "aid_cash_fen"),
            "{refused:?}"
        );
        let map = Node::Map(Default::default());
        assert!(typed_like("migrant", Some(&map), r#"{"workplace": "北京"}"#)?.is_map());
        assert!(typed_like("migrant", Some(&map), "北京").is_err());
        assert!(typed_like("migrant", Some(&map), "[1]").is_err());
        Ok(())
    }

    #[test]
    fn two_maps_added_concurrently_are_two_whole_values() -> TestResult {
        let mut base = AutoCommit::new();
        base.put_object(ROOT, "m", ObjType::Map)?;
        let mut a = base.fork().with_actor(ActorId::random());
        let mut b = base.fork().with_actor(ActorId::random());
        for (doc, place) in [(&mut a, "深圳"), (&mut b, "天津")] {
            let (_, m) = doc.get(ROOT, "m")?.ok_or("no m")?;
            let card = doc.put_object(&m, "migrant", ObjType::Map)?;
            doc.put(&card, "workplace", place)?;
        }
        a.merge(&mut b)?;
        let doc = a.document();
        let (_, m) = doc.get(ROOT, "m")?.ok_or("no m")?;
        let values = current_values(doc, &m, "migrant", ActorId::random().to_bytes(), Some(doc))?;
        let mut shown: Vec<String> = values.iter().map(|(v, _)| v.value.clone()).collect();
        shown.sort();
        assert_eq!(
            shown,
            vec![r#"{"workplace":"天津"}"#, r#"{"workplace":"深圳"}"#]
        );
        assert!(values.iter().all(|(_, node)| node.is_map()));
        assert_ne!(values[0].0.op, values[1].0.op);
        Ok(())
    }
}
