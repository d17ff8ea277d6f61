//! Fields that two devices set to different values while offline.
//!
//! Automerge keeps both values of such a field; the document shows one (the
//! same on every replica) and remembers the other. Nothing is lost, and the
//! branch secretary decides: choose one of the values or enter another.

use automerge::transaction::Transactable;
use automerge::{ObjType, ReadDoc, ScalarValue, Value};
use doorstep_protocol::DocumentId;
use doorstep_protocol::schema::conflicted_fields;

use crate::client::Client;
use crate::error::ClientError;

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
    pub value: String,
    /// The Automerge actor (hex) that wrote it.
    pub actor: String,
    /// Whether this device wrote it.
    pub mine: bool,
    /// When the change was made, seconds since the epoch (0 if unknown).
    pub at_unix_secs: i64,
}

/// How to settle a conflict.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "uniffi", derive(uniffi::Enum))]
pub enum Resolution {
    /// Keep the value at this index of [`Conflict::values`].
    Choose(usize),
    /// Replace all of them with a new text value.
    Enter(String),
}

/// A typed-in value, of the type the field holds now: a number field stays
/// a number (a string there would make the record invalid).
fn typed_like(shown: Option<&Value<'_>>, text: &str) -> Result<ScalarValue, ClientError> {
    let invalid = |what: &str| ClientError::Invalid(format!("{text:?} is not {what}"));
    Ok(match shown {
        Some(Value::Scalar(s)) => match s.as_ref() {
            ScalarValue::Int(_)
            | ScalarValue::Uint(_)
            | ScalarValue::F64(_)
            | ScalarValue::Counter(_) => {
                ScalarValue::Int(text.trim().parse().map_err(|_| invalid("a whole number"))?)
            }
            ScalarValue::Boolean(_) => {
                ScalarValue::Boolean(text.trim().parse().map_err(|_| invalid("true or false"))?)
            }
            _ => ScalarValue::Str(text.into()),
        },
        _ => ScalarValue::Str(text.into()),
    })
}

impl Client {
    /// Every conflicted field in every document on this device.
    pub async fn conflicts(&self) -> Result<Vec<Conflict>, ClientError> {
        let me = self.inner.actor.clone();
        let mut guard = self.replicas().await?;
        let replicas = guard.as_mut().ok_or(ClientError::NotEnrolled)?;
        let mut conflicts = Vec::new();
        for id in replicas.all().await? {
            let Some(replica) = replicas.replica(id) else {
                continue;
            };
            let doc = replica.doc();
            for collection in replica.kind.collections() {
                let Ok(Some((Value::Object(ObjType::Map), coll))) =
                    doc.get(automerge::ROOT, *collection)
                else {
                    continue;
                };
                for record in doc.keys(&coll) {
                    let Ok(Some((Value::Object(ObjType::Map), obj))) =
                        doc.get(&coll, record.as_str())
                    else {
                        continue;
                    };
                    for found in conflicted_fields(doc, &obj) {
                        let (field, values) = (found.path, found.values);
                        let values = values
                            .into_iter()
                            .map(|(value, op)| {
                                let actor = match &op {
                                    automerge::ObjId::Id(_, actor, _) => actor.clone(),
                                    automerge::ObjId::Root => automerge::ActorId::from([0u8; 16]),
                                };
                                let at_unix_secs = doc
                                    .hash_for_opid(&op)
                                    .and_then(|h| doc.get_change_meta_by_hash(&h))
                                    .map(|m| m.timestamp)
                                    .unwrap_or(0);
                                ConflictValue {
                                    value,
                                    mine: actor == me,
                                    actor: actor.to_hex_string(),
                                    at_unix_secs,
                                }
                            })
                            .collect();
                        conflicts.push(Conflict {
                            document: id,
                            collection: (*collection).to_owned(),
                            record: record.clone(),
                            field: field.join("."),
                            path: field,
                            values,
                        });
                    }
                }
            }
        }
        Ok(conflicts)
    }

    /// Settles a conflict with one new value that supersedes all of them,
    /// on this device and, after sync, everywhere.
    pub async fn resolve_conflict(
        &self,
        conflict: &Conflict,
        resolution: Resolution,
    ) -> Result<(), ClientError> {
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
        let Some((field, parents)) = path.split_last() else {
            return Err(ClientError::Invalid("empty conflict path".into()));
        };
        replicas
            .edit(conflict.document, kind, |tx| {
                let mut obj = automerge::ROOT;
                for key in parents {
                    match tx.get(&obj, *key)? {
                        Some((Value::Object(ObjType::Map), child)) => obj = child,
                        _ => {
                            return Err(ClientError::NotFound {
                                what: "field",
                                id: conflict.field.clone(),
                            });
                        }
                    }
                }
                let current = tx.get_all(&obj, *field)?;
                let value = match &resolution {
                    Resolution::Enter(text) => typed_like(current.last().map(|(v, _)| v), text)?,
                    Resolution::Choose(index) => match current.get(*index) {
                        Some((Value::Scalar(s), _)) => s.clone().into_owned(),
                        Some((Value::Object(ObjType::Text), id)) => {
                            ScalarValue::Str(tx.text(id)?.into())
                        }
                        Some(_) => {
                            return Err(ClientError::Invalid(
                                "only plain values can be chosen".into(),
                            ));
                        }
                        None => {
                            return Err(ClientError::Invalid(format!(
                                "no value {index} in this conflict"
                            )));
                        }
                    },
                };
                tx.put(&obj, *field, value)?;
                Ok(())
            })
            .await?;
        self.inner.edited.notify_one();
        Ok(())
    }
}
