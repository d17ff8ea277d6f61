//! SQL statements assembled at run time (lists and multi-row inserts), with
//! `$n` parameter markers that both backends read.
//!
//! sqlx's `QueryBuilder` writes the parameter marker of the database it is
//! typed for, and for `Any` that is `?`, which PostgreSQL refuses. SQLite
//! reads `$n` as the nth parameter, so one spelling serves both; every
//! literal query in the store is written with it too.

use std::fmt::Write;

use sqlx::any::{Any, AnyArguments};
use sqlx::query::Query;
use sqlx::{Arguments, Encode, Type};

/// A statement and the values bound to it so far.
pub struct Statement<'q> {
    sql: String,
    arguments: AnyArguments<'q>,
    bound: usize,
    /// The first value that failed to encode, reported by [`Statement::build`].
    error: Option<sqlx::error::BoxDynError>,
}

impl std::fmt::Debug for Statement<'_> {
    // The bound values are personal data; the text and their count are not.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Statement")
            .field("sql", &self.sql)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl<'q> Statement<'q> {
    pub fn new(sql: impl Into<String>) -> Statement<'q> {
        Statement {
            sql: sql.into(),
            arguments: AnyArguments::default(),
            bound: 0,
            error: None,
        }
    }

    /// Appends SQL text (never a value: values go through `push_bind`).
    pub fn push(&mut self, sql: &str) -> &mut Self {
        self.sql.push_str(sql);
        self
    }

    /// Appends the next parameter marker (`$n`) and binds `value` to it.
    pub fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        self.bound += 1;
        // Writing to a String cannot fail.
        let _ = write!(self.sql, "${}", self.bound);
        if let Err(error) = self.arguments.add(value) {
            self.error.get_or_insert(error);
        }
        self
    }

    /// Appends `values` as a comma-separated list of parameter markers and the
    /// closing parenthesis of the `in (` before it.
    pub fn push_list<T>(&mut self, values: impl IntoIterator<Item = T>) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.push_bind(value);
        }
        self.push(")")
    }

    /// Appends `values (…), (…)`, one tuple per item; `row` binds an item's
    /// columns in order.
    pub fn push_values<I>(
        &mut self,
        items: impl IntoIterator<Item = I>,
        mut row: impl FnMut(&mut Tuple<'_, 'q>, I),
    ) -> &mut Self {
        self.sql.push_str("values ");
        for (i, item) in items.into_iter().enumerate() {
            if i > 0 {
                self.sql.push_str(", ");
            }
            self.sql.push('(');
            row(
                &mut Tuple {
                    statement: self,
                    first: true,
                },
                item,
            );
            self.sql.push(')');
        }
        self
    }

    /// The query to run; the statement is empty of values afterwards.
    pub fn build(&mut self) -> Result<Query<'_, Any, AnyArguments<'_>>, sqlx::Error> {
        if let Some(error) = self.error.take() {
            return Err(sqlx::Error::Encode(error));
        }
        let arguments = std::mem::take(&mut self.arguments);
        Ok(sqlx::query_with(&self.sql, arguments))
    }

    pub fn sql(&self) -> &str {
        &self.sql
    }
}

/// The values of one row of a multi-row insert.
#[derive(Debug)]
pub struct Tuple<'s, 'q> {
    statement: &'s mut Statement<'q>,
    first: bool,
}

impl<'q> Tuple<'_, 'q> {
    pub fn push_bind<T>(&mut self, value: T) -> &mut Self
    where
        T: 'q + Encode<'q, Any> + Type<Any>,
    {
        if !self.first {
            self.statement.sql.push_str(", ");
        }
        self.first = false;
        self.statement.push_bind(value);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_in_order_across_lists_and_rows() {
        let mut s = Statement::new("insert into t (a, b) ");
        s.push_values([1i64, 2], |row, n| {
            row.push_bind(n).push_bind("x");
        });
        s.push(" where c in (").push_list(["p", "q"]);
        assert_eq!(
            s.sql(),
            "insert into t (a, b) values ($1, $2), ($3, $4) where c in ($5, $6)"
        );
    }
}
