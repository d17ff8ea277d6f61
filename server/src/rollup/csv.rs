//! CSV export: RFC 4180 quoting, UTF-8 with a byte-order mark so that
//! spreadsheet programs show Chinese names correctly.

use serde::Serialize;

/// Quotes a field when it holds a comma, a quote or a line break.
pub fn field(value: &str) -> String {
    if value.contains([',', '"', '\n', '\r']) {
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
}
