//! CSV export: RFC 4180 quoting, UTF-8 with a byte-order mark so that
//! spreadsheet programs show Chinese names correctly, and no cell that a
//! spreadsheet would run as a formula.
//!
//! Formula injection (OWASP "CSV Injection"): a cell that begins with `=`,
//! `+`, `-`, `@`, a tab or a carriage return is taken by Excel, WPS and
//! LibreOffice as a formula, so a branch or a member named
//! `=HYPERLINK("http://…","…")` would run in the office that opens the
//! export. Every such text cell gets a leading `'` and is quoted, as OWASP
//! recommends; the spreadsheet then shows it as text. We also treat a line
//! feed and the full-width forms `＝ ＋ － ＠` (which Chinese input methods
//! produce and some spreadsheets accept as formula signs) the same way, and
//! quote cells holding `;` so that a spreadsheet splitting on semicolons
//! cannot start a new cell in the middle of one.
//!
//! Numbers are exempt: a JSON number here comes from serialising one of our
//! own integer or float fields (counts, fen, percentages), never from text a
//! user typed, so `-500` stays the number -500. Anything a user typed is a
//! string and is always checked, even when it looks like a number (`-5`
//! exports as `'-5`).

use serde::Serialize;

/// Characters that make a spreadsheet read a cell as a formula when they
/// come first.
const FORMULA_START: &[char] = &[
    '=', '+', '-', '@', '\t', '\r', '\n', '\u{ff1d}', '\u{ff0b}', '\u{ff0d}', '\u{ff20}',
];

/// Quotes a field when it holds a comma, a semicolon, a quote or a line
/// break; a field that would start a formula gets a leading `'` and is
/// always quoted.
pub fn field(value: &str) -> String {
    if value.starts_with(FORMULA_START) {
        format!("\"'{}\"", value.replace('"', "\"\""))
    } else if value.contains([',', ';', '"', '\n', '\r']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// Writes records as CSV: a header from the first record's field names,
/// then one line per record. Values are rendered as JSON scalars would be.
pub fn to_csv<T: Serialize>(records: &[T]) -> Result<String, serde_json::Error> {
    let mut out = String::from("\u{feff}");
    let mut header_written = false;
    for record in records {
        let serde_json::Value::Object(map) = serde_json::to_value(record)? else {
            continue;
        };
        if !header_written {
            out.push_str(&map.keys().map(|k| field(k)).collect::<Vec<_>>().join(","));
            out.push_str("\r\n");
            header_written = true;
        }
        let line = map
            .values()
            .map(|v| match v {
                serde_json::Value::String(s) => field(s),
                serde_json::Value::Null => String::new(),
                // Ours, never user text: exempt (see the module comment).
                serde_json::Value::Number(n) => n.to_string(),
                // Booleans, and lists or objects as JSON text (which starts
                // with `[` or `{`, but is checked like any text).
                other => field(&other.to_string()),
            })
            .collect::<Vec<_>>()
            .join(",");
        out.push_str(&line);
        out.push_str("\r\n");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Row {
        tenant: String,
        visits: i64,
        share: f64,
    }

    fn row(tenant: &str, visits: i64) -> Row {
        Row {
            tenant: tenant.into(),
            visits,
            share: 0.5,
        }
    }

    #[test]
    fn quotes_only_what_needs_it_and_keeps_chinese() {
        let rows = vec![
            Row {
                tenant: "迎风怡丽社区".into(),
                visits: 561,
                share: 20.0,
            },
            Row {
                tenant: "A \"quoted\", name\nwith a break".into(),
                visits: 0,
                share: 0.5,
            },
        ];
        let csv = to_csv(&rows).expect("csv");
        assert_eq!(
            csv,
            "\u{feff}tenant,visits,share\r\n迎风怡丽社区,561,20.0\r\n\"A \"\"quoted\"\", name\nwith a break\",0,0.5\r\n"
        );
    }

    #[test]
    fn csv_cells_that_start_a_formula_are_neutralised_as_text() {
        for (name, cell) in [
            (
                "=HYPERLINK(\"http://x\",\"y\")",
                "\"'=HYPERLINK(\"\"http://x\"\",\"\"y\"\")\"",
            ),
            ("=1+1", "\"'=1+1\""),
            ("+86 138", "\"'+86 138\""),
            ("-5", "\"'-5\""),
            ("@SUM(A1)", "\"'@SUM(A1)\""),
            ("\tcmd", "\"'\tcmd\""),
            ("\rcmd", "\"'\rcmd\""),
            ("\ncmd", "\"'\ncmd\""),
            ("＝1+1", "\"'＝1+1\""),
            ("－5", "\"'－5\""),
        ] {
            assert_eq!(field(name), cell, "{name:?}");
            let csv = to_csv(&[row(name, 1)]).expect("csv");
            assert_eq!(
                csv,
                format!("\u{feff}tenant,visits,share\r\n{cell},1,0.5\r\n"),
                "{name:?}"
            );
        }
    }

    #[test]
    fn csv_formula_signs_inside_a_cell_or_in_chinese_text_are_left_alone() {
        assert_eq!(field("a=b"), "a=b");
        assert_eq!(field("2026-03"), "2026-03");
        assert_eq!(field("迎风-怡丽"), "迎风-怡丽");
        assert_eq!(field(" =1"), " =1");
        // A semicolon could start a cell where `;` separates: quoted.
        assert_eq!(field("a;=1+1"), "\"a;=1+1\"");
        assert_eq!(field(""), "");
    }

    #[test]
    fn csv_numbers_we_format_stay_numbers_even_when_negative() {
        let csv = to_csv(&[row("迎风怡丽社区", -500)]).expect("csv");
        assert_eq!(
            csv,
            "\u{feff}tenant,visits,share\r\n迎风怡丽社区,-500,0.5\r\n"
        );
    }

    #[test]
    fn csv_lists_and_booleans_are_checked_as_text() {
        #[derive(Serialize)]
        struct Listing {
            kinds: Vec<&'static str>,
            ok: bool,
        }
        let csv = to_csv(&[Listing {
            kinds: vec!["hardship", "migrant"],
            ok: true,
        }])
        .expect("csv");
        assert_eq!(
            csv,
            "\u{feff}kinds,ok\r\n\"[\"\"hardship\"\",\"\"migrant\"\"]\",true\r\n"
        );
    }
}
