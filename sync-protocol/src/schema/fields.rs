//! Reading and writing record fields in Automerge maps.
//!
//! Records are written as maps of scalars (never Automerge Text, which costs
//! 4-6x in apply, load and size), but read tolerantly: a stock JS client
//! writes plain strings as Text, and its integers may arrive as floats.
//! Writers put a field only when its value changed, so two devices editing
//! different fields of one record merge without a conflict.

use std::collections::BTreeSet;
use std::str::FromStr;

use automerge::transaction::Transactable;
use automerge::{AutomergeError, ObjId, ObjType, ReadDoc, ScalarValue, Value};

use super::RecordId;
use crate::values::{Date, Fen};

/// A field that is missing or has the wrong shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FieldError {
    #[error("{0} is missing")]
    Missing(String),
    #[error("{field} has the wrong type: expected {expected}")]
    WrongType {
        field: String,
        expected: &'static str,
    },
    #[error("{field} is invalid: {reason}")]
    Invalid { field: String, reason: String },
}

/// Reads the fields of one map object.
#[derive(Debug)]
pub struct FieldReader<'a, D: ReadDoc> {
    doc: &'a D,
    obj: ObjId,
    path: String,
}

impl<'a, D: ReadDoc> FieldReader<'a, D> {
    pub fn new(doc: &'a D, obj: ObjId, path: String) -> Self {
        FieldReader { doc, obj, path }
    }

    fn field(&self, key: &str) -> String {
        format!("{}.{key}", self.path)
    }

    fn get(&self, key: &str) -> Result<Option<(Value<'a>, ObjId)>, FieldError> {
        self.doc
            .get(&self.obj, key)
            .map_err(|e| FieldError::Invalid {
                field: self.field(key),
                reason: e.to_string(),
            })
    }

    /// A string field: a scalar string, or Text as JS clients write it.
    pub fn opt_str(&self, key: &str) -> Result<Option<String>, FieldError> {
        match self.get(key)? {
            None => Ok(None),
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Str(s) => Ok(Some(s.to_string())),
                ScalarValue::Null => Ok(None),
                _ => Err(self.wrong(key, "string")),
            },
            Some((Value::Object(ObjType::Text), id)) => {
                self.doc
                    .text(&id)
                    .map(Some)
                    .map_err(|e| FieldError::Invalid {
                        field: self.field(key),
                        reason: e.to_string(),
                    })
            }
            Some(_) => Err(self.wrong(key, "string")),
        }
    }

    pub fn str(&self, key: &str) -> Result<String, FieldError> {
        match self.opt_str(key)? {
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(_) => Err(FieldError::Invalid {
                field: self.field(key),
                reason: "must not be empty".into(),
            }),
            None => Err(FieldError::Missing(self.field(key))),
        }
    }

    /// A string field parsed into a domain type.
    pub fn opt_parsed<T: FromStr>(&self, key: &str) -> Result<Option<T>, FieldError>
    where
        T::Err: std::fmt::Display,
    {
        self.opt_str(key)?
            .map(|s| {
                s.parse().map_err(|e: T::Err| FieldError::Invalid {
                    field: self.field(key),
                    reason: e.to_string(),
                })
            })
            .transpose()
    }

    pub fn parsed<T: FromStr>(&self, key: &str) -> Result<T, FieldError>
    where
        T::Err: std::fmt::Display,
    {
        self.opt_parsed(key)?
            .ok_or_else(|| FieldError::Missing(self.field(key)))
    }

    pub fn date(&self, key: &str) -> Result<Date, FieldError> {
        self.parsed(key)
    }

    pub fn opt_date(&self, key: &str) -> Result<Option<Date>, FieldError> {
        self.opt_parsed(key)
    }

    pub fn id(&self, key: &str) -> Result<RecordId, FieldError> {
        self.parsed(key)
    }

    pub fn opt_id(&self, key: &str) -> Result<Option<RecordId>, FieldError> {
        self.opt_parsed(key)
    }

    /// An integer; whole-valued floats and counters are accepted.
    pub fn opt_i64(&self, key: &str) -> Result<Option<i64>, FieldError> {
        match self.get(key)? {
            None => Ok(None),
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Int(i) => Ok(Some(*i)),
                ScalarValue::Uint(u) => i64::try_from(*u)
                    .map(Some)
                    .map_err(|_| self.wrong(key, "integer")),
                ScalarValue::F64(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(Some(*f as i64)),
                ScalarValue::Counter(c) => Ok(Some(i64::from(c))),
                ScalarValue::Null => Ok(None),
                _ => Err(self.wrong(key, "integer")),
            },
            Some(_) => Err(self.wrong(key, "integer")),
        }
    }

    pub fn i64_or_zero(&self, key: &str) -> Result<i64, FieldError> {
        Ok(self.opt_i64(key)?.unwrap_or(0))
    }

    pub fn fen_or_zero(&self, key: &str) -> Result<Fen, FieldError> {
        Ok(Fen(self.i64_or_zero(key)?))
    }

    pub fn bool_or_false(&self, key: &str) -> Result<bool, FieldError> {
        match self.get(key)? {
            None => Ok(false),
            Some((Value::Scalar(s), _)) => match s.as_ref() {
                ScalarValue::Boolean(b) => Ok(*b),
                ScalarValue::Null => Ok(false),
                _ => Err(self.wrong(key, "boolean")),
            },
            Some(_) => Err(self.wrong(key, "boolean")),
        }
    }

    /// A set stored as a map from member to `true`, so concurrent additions
    /// from two devices both survive.
    pub fn set(&self, key: &str) -> Result<BTreeSet<String>, FieldError> {
        match self.child(key)? {
            None => Ok(BTreeSet::new()),
            Some(child) => Ok(child
                .keys()
                .into_iter()
                .filter(|k| child.bool_or_false(k).unwrap_or(false))
                .collect()),
        }
    }

    /// A set of enum values; an unknown value is an error.
    pub fn enum_set<T: FromStr + Ord>(&self, key: &str) -> Result<BTreeSet<T>, FieldError>
    where
        T::Err: std::fmt::Display,
    {
        self.set(key)?
            .into_iter()
            .map(|s| {
                s.parse().map_err(|e: T::Err| FieldError::Invalid {
                    field: self.field(key),
                    reason: e.to_string(),
                })
            })
            .collect()
    }

    /// A nested map, if present.
    pub fn child(&self, key: &str) -> Result<Option<FieldReader<'a, D>>, FieldError> {
        match self.get(key)? {
            None => Ok(None),
            Some((Value::Object(ObjType::Map), id)) => {
                Ok(Some(FieldReader::new(self.doc, id, self.field(key))))
            }
            Some((Value::Scalar(s), _)) if matches!(s.as_ref(), ScalarValue::Null) => Ok(None),
            Some(_) => Err(self.wrong(key, "map")),
        }
    }

    pub fn keys(&self) -> Vec<String> {
        self.doc.keys(&self.obj).collect()
    }

    fn wrong(&self, key: &str, expected: &'static str) -> FieldError {
        FieldError::WrongType {
            field: self.field(key),
            expected,
        }
    }
}

/// Writes the fields of one map object, touching only what changed.
#[derive(Debug)]
pub struct FieldWriter<'a, T: Transactable> {
    tx: &'a mut T,
    obj: ObjId,
}

impl<'a, T: Transactable> FieldWriter<'a, T> {
    pub fn new(tx: &'a mut T, obj: ObjId) -> Self {
        FieldWriter { tx, obj }
    }

    fn current(&self, key: &str) -> Result<Option<ScalarValue>, AutomergeError> {
        Ok(match self.tx.get(&self.obj, key)? {
            Some((Value::Scalar(s), _)) => Some(s.into_owned()),
            _ => None,
        })
    }

    /// Puts a scalar unless the field already shows exactly that value. A
    /// conflicted field showing it is left alone too: writing it again would
    /// settle the conflict silently, and only a person may settle one.
    pub fn scalar(
        &mut self,
        key: &str,
        value: impl Into<ScalarValue>,
    ) -> Result<(), AutomergeError> {
        let value = value.into();
        if self.current(key)?.as_ref() != Some(&value) {
            self.tx.put(&self.obj, key, value)?;
        }
        Ok(())
    }

    pub fn str(&mut self, key: &str, value: &str) -> Result<(), AutomergeError> {
        self.scalar(key, value)
    }

    pub fn opt_str(&mut self, key: &str, value: Option<&str>) -> Result<(), AutomergeError> {
        match value {
            Some(v) => self.str(key, v),
            None => self.delete(key),
        }
    }

    pub fn display(
        &mut self,
        key: &str,
        value: &impl std::fmt::Display,
    ) -> Result<(), AutomergeError> {
        self.str(key, &value.to_string())
    }

    pub fn opt_display(
        &mut self,
        key: &str,
        value: Option<&impl std::fmt::Display>,
    ) -> Result<(), AutomergeError> {
        match value {
            Some(v) => self.display(key, v),
            None => self.delete(key),
        }
    }

    pub fn i64(&mut self, key: &str, value: i64) -> Result<(), AutomergeError> {
        self.scalar(key, value)
    }

    pub fn bool(&mut self, key: &str, value: bool) -> Result<(), AutomergeError> {
        self.scalar(key, value)
    }

    pub fn delete(&mut self, key: &str) -> Result<(), AutomergeError> {
        if self.tx.get(&self.obj, key)?.is_some() {
            self.tx.delete(&self.obj, key)?;
        }
        Ok(())
    }

    /// Makes the set stored at `key` equal `values`, adding and removing
    /// single entries so concurrent edits to other entries are kept.
    pub fn set<S: AsRef<str>>(
        &mut self,
        key: &str,
        values: impl IntoIterator<Item = S>,
    ) -> Result<(), AutomergeError> {
        let wanted: BTreeSet<String> = values.into_iter().map(|v| v.as_ref().to_owned()).collect();
        let mut child = self.child(key)?;
        let present: Vec<String> = child.tx.keys(&child.obj).collect();
        for k in &present {
            if !wanted.contains(k) {
                child.tx.delete(&child.obj, k.as_str())?;
            }
        }
        for k in &wanted {
            child.bool(k, true)?;
        }
        Ok(())
    }

    /// The keys of the map being written.
    pub fn keys(&self) -> Vec<String> {
        self.tx.keys(&self.obj).collect()
    }

    /// The nested map at `key`, created if absent.
    pub fn child(&mut self, key: &str) -> Result<FieldWriter<'_, T>, AutomergeError> {
        let obj = match self.tx.get(&self.obj, key)? {
            Some((Value::Object(ObjType::Map), id)) => id,
            _ => self.tx.put_object(&self.obj, key, ObjType::Map)?,
        };
        Ok(FieldWriter { tx: self.tx, obj })
    }
}
