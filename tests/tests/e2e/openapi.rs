//! The OpenAPI document cannot drift from the router: the (method, path)
//! pairs built in `server/src/http/mod.rs` are read from its source and must
//! be exactly the ones `openapi.json` documents, and every documented
//! operation must reach a handler on a real server (anything but the
//! router's own 404 or 405).

use std::collections::BTreeSet;

use anyhow::{Context, bail, ensure};
use doorstep_server::tenancy::Role;
use doorstep_tests::{TestServer, workspace_root};
use reqwest::{Method, StatusCode};
use serde_json::Value;

pub(crate) type Operations = BTreeSet<(String, String)>;

const METHODS: &[&str] = &[
    "get", "post", "put", "delete", "patch", "head", "options", "trace",
];

/// Builders that add routes this parser cannot see: if the router starts
/// using one, this test must learn it (or the routes must move to
/// `.route(...)` lines).
const UNSUPPORTED: &[&str] = &[
    ".nest(",
    ".nest_service(",
    ".merge(",
    ".route_service(",
    ".fallback(",
];

/// The source with `//` comments removed (string literals kept intact).
fn without_comments(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    let mut chars = source.chars().peekable();
    let mut in_string = false;
    while let Some(c) = chars.next() {
        if in_string {
            out.push(c);
            match c {
                '\\' => out.extend(chars.next()),
                '"' => in_string = false,
                _ => {}
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if c == '/' && chars.peek() == Some(&'/') {
            for c in chars.by_ref() {
                if c == '\n' {
                    out.push('\n');
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The arguments of one `.route(` call starting at `start` (just after its
/// parenthesis): the path literal, and the method-router calls at the top
/// level of the arguments (`get(h)`, `.post(h)`; handlers are one level
/// deeper and so never mistaken for methods).
fn parse_route(source: &str, start: usize) -> anyhow::Result<(String, Vec<String>)> {
    let bytes = source.as_bytes();
    let mut depth = 1usize;
    let mut i = start;
    let mut path = None;
    let mut methods = Vec::new();
    while depth > 0 {
        let c = *bytes.get(i).context("unbalanced .route(")?;
        match c {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => depth -= 1,
            b'"' => {
                let mut j = i + 1;
                let mut text = String::new();
                while bytes[j] != b'"' {
                    if bytes[j] == b'\\' {
                        j += 1;
                    }
                    text.push(bytes[j] as char);
                    j += 1;
                }
                if depth == 1 && path.is_none() {
                    path = Some(text);
                }
                i = j;
            }
            c if depth == 1 && (c.is_ascii_alphabetic() || c == b'_') => {
                let mut j = i;
                while j < bytes.len() && (bytes[j].is_ascii_alphanumeric() || bytes[j] == b'_') {
                    j += 1;
                }
                let word = &source[i..j];
                let mut k = j;
                while bytes[k].is_ascii_whitespace() {
                    k += 1;
                }
                if bytes[k] == b'(' {
                    if METHODS.contains(&word) {
                        methods.push(word.to_uppercase());
                    } else if ["any", "on", "any_service", "on_service"].contains(&word) {
                        bail!(
                            "a route uses {word}(...): list its methods one by one, or teach this test"
                        );
                    }
                }
                i = j - 1;
            }
            _ => {}
        }
        i += 1;
    }
    let path = path.context("a .route( without a path literal")?;
    ensure!(!methods.is_empty(), "no method for {path}");
    Ok((path, methods))
}

/// Every (method, path) the router in `server/src/http/mod.rs` is built
/// from.
pub(crate) fn router_operations() -> anyhow::Result<Operations> {
    let file = workspace_root().join("server/src/http/mod.rs");
    let source = without_comments(&std::fs::read_to_string(&file)?);
    let body = &source[source
        .find("pub fn router(")
        .context("no `pub fn router(` in http/mod.rs")?..];
    for builder in UNSUPPORTED {
        ensure!(
            !body.contains(builder),
            "the router uses `{builder}`: its routes would escape this test; teach it or use .route lines"
        );
    }
    let mut operations = Operations::new();
    for (at, _) in body.match_indices(".route(") {
        let (path, methods) = parse_route(body, at + ".route(".len())?;
        ensure!(
            !path.contains('*'),
            "wildcard route {path}: document it and teach this test"
        );
        for method in methods {
            ensure!(
                operations.insert((method.clone(), path.clone())),
                "{method} {path} is routed twice"
            );
        }
    }
    ensure!(
        operations.len() > 10,
        "parsed too few routes: {operations:?}"
    );
    Ok(operations)
}

pub(crate) fn openapi_document() -> anyhow::Result<Value> {
    let file = workspace_root().join("server/src/http/assets/openapi.json");
    Ok(serde_json::from_str(&std::fs::read_to_string(file)?)?)
}

/// Every (method, path) that `openapi.json` documents.
fn documented_operations(doc: &Value) -> anyhow::Result<Operations> {
    let mut operations = Operations::new();
    for (path, item) in doc["paths"].as_object().context("paths")? {
        for (key, _) in item.as_object().context("path item")? {
            if METHODS.contains(&key.as_str()) {
                operations.insert((key.to_uppercase(), path.clone()));
            }
        }
    }
    Ok(operations)
}

fn show(operations: &Operations) -> String {
    operations
        .iter()
        .map(|(m, p)| format!("  {m} {p}"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn openapi_documents_exactly_the_routes_the_router_has() -> anyhow::Result<()> {
    let routed = router_operations()?;
    let documented = documented_operations(&openapi_document()?)?;
    let undocumented: Operations = routed.difference(&documented).cloned().collect();
    let unrouted: Operations = documented.difference(&routed).cloned().collect();
    assert!(
        undocumented.is_empty() && unrouted.is_empty(),
        "openapi.json has drifted from server/src/http/mod.rs\n\
         routed but not documented:\n{}\ndocumented but not routed:\n{}",
        show(&undocumented),
        show(&unrouted)
    );
    Ok(())
}

#[test]
fn openapi_router_parser_reads_multi_line_routes_and_ignores_handlers() -> anyhow::Result<()> {
    let source = r#"pub fn router(state: AppState) -> Router {
        Router::new()
            // .route("/commented", get(nothing))
            .route("/a/{id}", get(api::get).post(post_it))
            .route(
                "/b",
                axum::routing::delete(|| async { Redirect::to("/c") })
                    .put(handlers::put),
            )
    }"#;
    let body = without_comments(source);
    let routes: Vec<_> = body
        .match_indices(".route(")
        .map(|(at, _)| parse_route(&body, at + 7))
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(
        routes,
        [
            (
                "/a/{id}".to_owned(),
                vec!["GET".to_owned(), "POST".to_owned()]
            ),
            ("/b".to_owned(), vec!["DELETE".to_owned(), "PUT".to_owned()]),
        ]
    );
    Ok(())
}

#[test]
fn openapi_every_operation_has_a_summary_responses_and_its_path_parameters() -> anyhow::Result<()> {
    let doc = openapi_document()?;
    assert_eq!(doc["openapi"], "3.1.0");
    for (path, item) in doc["paths"].as_object().context("paths")? {
        let templated: BTreeSet<&str> = path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        for (method, op) in item.as_object().context("path item")? {
            if !METHODS.contains(&method.as_str()) {
                continue;
            }
            assert!(op["summary"].is_string(), "{method} {path}: no summary");
            assert!(
                op["responses"].as_object().is_some_and(|r| !r.is_empty()),
                "{method} {path}: no responses"
            );
            let declared: BTreeSet<&str> = op["parameters"]
                .as_array()
                .into_iter()
                .chain(item["parameters"].as_array())
                .flatten()
                .filter(|p| p["in"] == "path")
                .filter_map(|p| p["name"].as_str())
                .collect();
            assert_eq!(declared, templated, "{method} {path}: path parameters");
        }
    }
    Ok(())
}

/// Sends every documented operation, with a made-up id in each path
/// parameter and an empty JSON object as the body, and checks that a handler
/// answered: never `405`, and `404` only as a handler's JSON error (the
/// router's own 404 has no body).
async fn every_operation_reaches_a_handler(
    server: &TestServer,
    operations: &Operations,
    token: Option<&str>,
) -> anyhow::Result<()> {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?;
    // An id that names nothing, for every `{id}` in a path.
    let unknown_id = uuid::Uuid::new_v4().to_string();
    // Logging out ends the session the other requests use: last.
    let mut ordered: Vec<&(String, String)> = operations.iter().collect();
    ordered.sort_by_key(|(_, path)| path.ends_with("/logout"));
    for (method, path) in ordered {
        let concrete: String = path
            .split('/')
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') {
                    unknown_id.as_str()
                } else {
                    s
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let mut request = client.request(
            Method::from_bytes(method.as_bytes())?,
            format!("{}{concrete}", server.http_url()),
        );
        if method != "GET" {
            request = request.json(&serde_json::json!({}));
        }
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status();
        let json = response
            .headers()
            .get("content-type")
            .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
        let body = response.text().await?;
        assert_ne!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path} is documented but the router does not route that method"
        );
        if status == StatusCode::NOT_FOUND {
            assert!(
                json && body.contains("\"error\""),
                "{method} {path} ({concrete}) is documented but the router has no such route: {body:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn openapi_every_documented_operation_reaches_a_handler_on_a_real_server()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let d = server.district().await?;
    let doc = openapi_document()?;
    let operations = documented_operations(&doc)?;

    // The server serves this very document.
    let served: Value = reqwest::get(format!("{}/api/v1/openapi.json", server.http_url()))
        .await?
        .error_for_status()?
        .json()
        .await?;
    assert_eq!(served, doc, "GET /api/v1/openapi.json is not openapi.json");

    every_operation_reaches_a_handler(&server, &operations, None).await?;
    let token = server
        .login_as("openapi-admin", Role::DistrictAdmin, d.district.id)
        .await?;
    every_operation_reaches_a_handler(&server, &operations, Some(&token)).await?;

    // And the router answers nothing else: an undocumented path is the
    // router's 404.
    let response = reqwest::get(format!("{}/api/v1/no-such-route", server.http_url())).await?;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    Ok(())
}
