//! `schema/plugin-config.schema.json` against the filter's own parser (`Config::parse`).
//!
//! The schema is what users validate their YAML with; the parser is what Envoy runs. This test
//! keeps them in step without reading `src/config.rs`: it asks the parser. For every object
//! level, it adds an unknown field and reads serde's "unknown field `x`, expected one of `a`,
//! `b`" to learn the names the filter accepts there, then compares them with the schema's
//! `properties`, both ways. It finds nested levels the same way (a field whose value may be an
//! object with fields of its own), so a new section in the code shows up here too.
//!
//! On top of the names: a configuration built from the schema (every field, at its default or
//! example) is accepted, and so is one with only the required fields; leaving out a required
//! field is refused; every default, minimum, maximum, length and enum in the schema is what the
//! filter does; and the shared probes in `schema/plugin-config.probes.json` (patterns, types)
//! get the same answer from the filter as from the schema (checked on the schema side by
//! `envoy/tests/test_deploy_schema.py`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    reason = "test code: a failed expectation should stop the test with its message"
)]

use std::collections::BTreeSet;
use std::fmt::Write as _;

use inference_gate::config::{Config, ConfigError};
use serde_json::{json, Map, Value};

const SCHEMA_FILE: &str = "schema/plugin-config.schema.json";
const PROBES_FILE: &str = "schema/plugin-config.probes.json";
const PROBE_FIELD: &str = "__schema_probe";

fn read_json(relative: &str) -> Value {
    let path = format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: not JSON: {e}"))
}

fn schema() -> Value {
    read_json(SCHEMA_FILE)
}

fn parse(config: &Value) -> Result<Config, ConfigError> {
    Config::parse(config.to_string().as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Paths: a list of object keys and array indexes, written the way the filter names fields.

#[derive(Clone, Debug)]
enum Step {
    Key(String),
    Index(usize),
}

type Path = Vec<Step>;

fn child(path: &Path, step: Step) -> Path {
    let mut p = path.clone();
    p.push(step);
    p
}

fn key(name: &str) -> Step {
    Step::Key(name.to_string())
}

/// `tenants[0].id`, as in the filter's error messages; the root is `(top level)`.
fn render(path: &Path) -> String {
    let mut out = String::new();
    for step in path {
        match step {
            Step::Key(k) if out.is_empty() => out.push_str(k),
            Step::Key(k) => write!(out, ".{k}").unwrap(),
            Step::Index(i) => write!(out, "[{i}]").unwrap(),
        }
    }
    if out.is_empty() {
        "(top level)".to_string()
    } else {
        out
    }
}

fn path_from_json(steps: &Value) -> Path {
    steps
        .as_array()
        .expect("a probe path is a list")
        .iter()
        .map(|s| match s {
            Value::String(k) => Step::Key(k.clone()),
            Value::Number(n) => Step::Index(n.as_u64().expect("an index") as usize),
            other => panic!("bad path step {other}"),
        })
        .collect()
}

fn get_mut<'a>(root: &'a mut Value, path: &Path) -> &'a mut Value {
    path.iter().fold(root, |v, step| match step {
        Step::Key(k) => &mut v[k.as_str()],
        Step::Index(i) => &mut v[*i],
    })
}

/// A copy of `config` with `value` at `path` (the last key is added if missing).
fn with(config: &Value, path: &Path, value: Value) -> Value {
    let mut out = config.clone();
    *get_mut(&mut out, path) = value;
    out
}

/// A copy of `config` without the field at `path`.
fn without(config: &Value, path: &Path) -> Value {
    let mut out = config.clone();
    let (last, parent) = path.split_last().expect("a field path");
    let Step::Key(name) = last else {
        panic!("not a field: {}", render(path))
    };
    get_mut(&mut out, &parent.to_vec())
        .as_object_mut()
        .expect("an object")
        .remove(name);
    out
}

// ---------------------------------------------------------------------------------------------
// The schema

/// Follows a local `$ref` (`#/$defs/name`).
fn resolve<'a>(root: &'a Value, node: &'a Value) -> &'a Value {
    match node.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            resolve(root, root.pointer(pointer).expect("$ref resolves"))
        }
        None => node,
    }
}

/// A field the schema lists but refuses whatever its value (`"not": {}`): reserved names
/// that the filter knows but refuses in this version (as `sso` and `saml` were before SAML
/// sign-on).
fn is_reserved(node: &Value) -> bool {
    node.get("not") == Some(&json!({}))
}

/// An optional field the full configuration leaves out: a reserved one, or one whose value
/// cannot be an example in the schema (`x-left-out-of-examples` says why; such a field is
/// still compared by name, and its own tests cover its values).
fn left_out(node: &Value) -> bool {
    is_reserved(node) || node.get("x-left-out-of-examples").is_some()
}

/// The object schema under this property, through `$ref`, `items` and the first `oneOf`
/// branch; `(node, is_array)`.
fn object_schema<'a>(root: &'a Value, node: &'a Value) -> Option<(&'a Value, bool)> {
    let node = resolve(root, node);
    if node.get("properties").is_some() {
        return Some((node, false));
    }
    if let Some(items) = node.get("items") {
        let items = resolve(root, items);
        return items.get("properties").map(|_| (items, true));
    }
    None
}

fn properties(node: &Value) -> &Map<String, Value> {
    node["properties"].as_object().expect("properties")
}

fn required(node: &Value) -> BTreeSet<String> {
    node.get("required")
        .and_then(Value::as_array)
        .map(|r| r.iter().map(|v| v.as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

/// A value for this schema node: `full` takes every listed field (reserved ones left out) at
/// its default or first example; otherwise only the required ones.
fn build(root: &Value, node: &Value, full: bool) -> Value {
    let node = resolve(root, node);
    if let Some(value) = node.get("default").or_else(|| node.pointer("/examples/0")) {
        return value.clone();
    }
    if let Some(first) = node.pointer("/oneOf/0") {
        return build(root, first, full);
    }
    match node.get("type").and_then(Value::as_str) {
        Some("object") => {
            let needed = required(node);
            let fields = properties(node)
                .iter()
                .filter(|(name, field)| {
                    needed.contains(*name) || (full && !left_out(resolve(root, field)))
                })
                .map(|(name, field)| (name.clone(), build(root, field, full)))
                .collect();
            Value::Object(fields)
        }
        Some("array") => json!([build(root, &node["items"], full)]),
        other => panic!("{SCHEMA_FILE}: give a default or an example to this {other:?} field"),
    }
}

/// `config` less the fields the filter refuses (unknown, or of a value it does not take), so
/// that one field the schema gets wrong (reported by the comparison) does not hide every other
/// finding.
fn known_only(mut config: Value) -> Value {
    for _ in 0..64 {
        let Err(err) = parse(&config) else { break };
        let path = parse_rendered(&err.field);
        let present = path.iter().try_fold(&config, |v, s| match s {
            Step::Key(k) => v.get(k.as_str()),
            Step::Index(i) => v.get(*i),
        });
        if present.is_none() || !matches!(path.last(), Some(Step::Key(_))) {
            break;
        }
        config = without(&config, &path);
    }
    config
}

/// The inverse of `render`, for the field names in the filter's errors.
fn parse_rendered(field: &str) -> Path {
    let mut path = Vec::new();
    for part in field.split('.') {
        let mut pieces = part.split('[');
        if let Some(name) = pieces.next().filter(|n| !n.is_empty()) {
            path.push(key(name));
        }
        for index in pieces {
            path.push(Step::Index(
                index.trim_end_matches(']').parse().expect("an index"),
            ));
        }
    }
    path
}

/// Every field of the schema at its default or example (less those the filter does not know).
fn full_config(root: &Value) -> Value {
    known_only(build(root, root, true))
}

// ---------------------------------------------------------------------------------------------
// The filter, asked

/// The names the filter accepts in the object at `path` of `config`, from the error for an
/// unknown field there; `None` if the filter does not reject the probe as an unknown field
/// of that object (the value there is not an object with named fields).
fn accepted_fields(config: &Value, path: &Path) -> Option<BTreeSet<String>> {
    let probe_path = child(path, key(PROBE_FIELD));
    let err = parse(&with(config, &probe_path, json!(0))).err()?;
    let unknown = format!("unknown field `{PROBE_FIELD}`");
    if err.field != render(&probe_path) || !err.message.starts_with(&unknown) {
        return None;
    }
    // serde: "there are no fields", "expected `a`", "expected `a` or `b`",
    // "expected one of `a`, `b`, `c`"; then serde_json's " at line 1 column 9".
    let expected = err.message[unknown.len()..].split(" at line ").next()?;
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// Whether the filter reads an object with named fields (or a list of them) at `path`:
/// `Some(is_array)`.
fn filter_object_at(config: &Value, path: &Path) -> Option<bool> {
    let object = with(config, path, json!({}));
    if accepted_fields(&object, path).is_some() {
        return Some(false);
    }
    let list = with(config, path, json!([{}]));
    accepted_fields(&list, &child(path, Step::Index(0))).map(|_| true)
}

/// Compares one object level (and, recursively, the ones below it) of the schema with the
/// filter; every difference goes to `problems` as an instruction.
fn compare_level(
    root: &Value,
    node: &Value,
    config: &Value,
    path: &Path,
    problems: &mut Vec<String>,
) {
    let at = render(path);
    let Some(code) = accepted_fields(config, path) else {
        problems.push(format!(
            "{at}: the schema describes an object here, but the filter did not refuse an \
             unknown field in it; is the section still read with deny_unknown_fields?"
        ));
        return;
    };
    let listed: BTreeSet<String> = properties(node).keys().cloned().collect();

    for name in code.difference(&listed) {
        problems.push(format!(
            "{}: the filter accepts this field but {SCHEMA_FILE} does not describe it. Add \
             \"{name}\" to the `properties` of {at} (its type, default, minimum/maximum or \
             enum, and a description as in the README's configuration table).",
            render(&child(path, key(name)))
        ));
    }
    for name in listed.difference(&code) {
        problems.push(format!(
            "{}: {SCHEMA_FILE} describes this field but the filter refuses it as unknown. \
             Remove \"{name}\" from the `properties` of {at}, or teach src/config.rs the field.",
            render(&child(path, key(name)))
        ));
    }

    for name in code.intersection(&listed) {
        let field_path = child(path, key(name));
        let field_schema = &properties(node)[name];
        let in_schema = object_schema(root, field_schema);
        let in_code = filter_object_at(config, &field_path);
        match (in_schema, in_code) {
            (Some((sub, schema_array)), Some(code_array)) if schema_array == code_array => {
                // An empty object is enough to probe: the probe field sorts first, so the
                // filter meets it before it could miss a required field.
                let (sub_path, sub_config) = if code_array {
                    let p = child(&field_path, Step::Index(0));
                    (p, with(config, &field_path, json!([{}])))
                } else {
                    (field_path.clone(), with(config, &field_path, json!({})))
                };
                compare_level(root, sub, &sub_config, &sub_path, problems);
            }
            (None, None) => {}
            (_, Some(code_array)) => {
                let shape = if code_array {
                    "a list of objects"
                } else {
                    "an object"
                };
                let fields = accepted_fields(&with(config, &field_path, json!({})), &field_path)
                    .or_else(|| {
                        accepted_fields(
                            &with(config, &field_path, json!([{}])),
                            &child(&field_path, Step::Index(0)),
                        )
                    })
                    .unwrap_or_default();
                problems.push(format!(
                    "{}: the filter reads {shape} here, with the fields {fields:?}, but {SCHEMA_FILE} \
                     does not describe them. Give this property `\"type\": \"object\"` (inside \
                     `items` for a list), `additionalProperties: false` and those `properties`.",
                    render(&field_path)
                ));
            }
            (Some(_), _) => problems.push(format!(
                "{}: {SCHEMA_FILE} describes an object with properties here, but the filter \
                 does not read one. Make the schema say what the filter takes.",
                render(&field_path)
            )),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The tests

#[test]
fn every_field_the_filter_accepts_is_in_the_schema_and_no_other() {
    let root = schema();
    let config = full_config(&root);
    let mut problems = Vec::new();
    compare_level(&root, &root, &config, &Vec::new(), &mut problems);
    assert!(
        problems.is_empty(),
        "{SCHEMA_FILE} is out of step with the filter's configuration (src/config.rs):\n- {}\n",
        problems.join("\n- ")
    );
}

#[test]
fn a_config_with_every_schema_field_is_accepted() {
    let root = schema();
    let config = build(&root, &root, true);
    if let Err(err) = parse(&config) {
        panic!(
            "the filter refuses a configuration built from the defaults and examples of \
             {SCHEMA_FILE}: {err}\n(fix the default or example of that field)\n{config:#}"
        );
    }
}

#[test]
fn a_config_with_only_the_required_fields_is_accepted_and_each_is_required() {
    let root = schema();
    let minimal = build(&root, &root, false);
    if let Err(err) = parse(&minimal) {
        panic!("the filter refuses the schema's required fields alone: {err}\n{minimal:#}");
    }

    for (path, node) in object_levels(&root, &minimal) {
        for name in required(node) {
            let field = child(&path, key(&name));
            let err = parse(&without(&minimal, &field)).err();
            let named = err.as_ref().is_some_and(|e| e.message.contains(&name));
            assert!(
                named,
                "{SCHEMA_FILE} lists {} as required, but the filter does without it ({err:?}); \
                 drop it from `required` or give the code no default",
                render(&field)
            );
        }
    }
}

/// Every object level the schema describes, with its path in a configuration like `config`.
fn object_levels<'a>(root: &'a Value, config: &Value) -> Vec<(Path, &'a Value)> {
    fn walk<'a>(
        root: &'a Value,
        node: &'a Value,
        path: Path,
        config: &Value,
        out: &mut Vec<(Path, &'a Value)>,
    ) {
        for (name, field) in properties(node) {
            let field_path = child(&path, key(name));
            let present = field_path.iter().try_fold(config, |v, s| match s {
                Step::Key(k) => v.get(k.as_str()),
                Step::Index(i) => v.get(*i),
            });
            if present.is_none() {
                continue;
            }
            if let Some((sub, is_array)) = object_schema(root, field) {
                let sub_path = if is_array {
                    child(&field_path, Step::Index(0))
                } else {
                    field_path
                };
                walk(root, sub, sub_path, config, out);
            }
        }
        out.push((path, node));
    }
    let mut out = Vec::new();
    walk(root, root, Vec::new(), config, &mut out);
    out
}

/// Every leaf field of the full configuration, with its schema node.
fn leaves<'a>(root: &'a Value, config: &Value) -> Vec<(Path, &'a Value)> {
    let mut out = Vec::new();
    for (path, node) in object_levels(root, config) {
        for (name, field) in properties(node) {
            let field = resolve(root, field);
            if !is_reserved(field) && object_schema(root, field).is_none() {
                out.push((child(&path, key(name)), field));
            }
        }
    }
    out
}

#[test]
fn schema_defaults_are_the_filters_defaults() {
    let root = schema();
    let full = full_config(&root);
    let mut problems = Vec::new();
    for (path, node) in leaves(&root, &full) {
        let Some(default) = node.get("default") else {
            continue;
        };
        // Set to the default, or left out: the compiled configuration must be the same.
        let at = render(&path);
        match (
            parse(&with(&full, &path, default.clone())),
            parse(&without(&full, &path)),
        ) {
            (Ok(set), Ok(unset)) if format!("{set:?}") == format!("{unset:?}") => {}
            (Ok(_), Ok(_)) => problems.push(format!(
                "{at}: the schema's default is {default}, but the filter's is another value"
            )),
            (Err(err), _) => problems.push(format!(
                "{at}: the filter refuses the schema's default {default}: {err}"
            )),
            (_, Err(err)) => problems.push(format!(
                "{at}: the schema gives a default, but the filter requires the field: {err}"
            )),
        }
    }
    assert!(
        problems.is_empty(),
        "{SCHEMA_FILE}:\n- {}",
        problems.join("\n- ")
    );
}

#[test]
fn schema_ranges_lengths_and_enums_are_the_filters() {
    let root = schema();
    let full = full_config(&root);
    let mut problems = Vec::new();
    let mut check = |path: &Path, value: Value, valid: bool, rule: &str| {
        let result = parse(&with(&full, path, value.clone()));
        let shown = match &value {
            Value::String(s) if s.chars().count() > 20 => {
                format!("a {}-character string", s.chars().count())
            }
            other => other.to_string(),
        };
        match (valid, result) {
            (true, Err(err)) => problems.push(format!(
                "{}: the schema allows {shown} ({rule}) but the filter refuses it: {err}",
                render(path)
            )),
            (false, Ok(_)) => problems.push(format!(
                "{}: the schema refuses {shown} ({rule}) but the filter accepts it",
                render(path)
            )),
            (false, Err(err)) if !err.field.starts_with(&render(path)) => problems.push(format!(
                "{}: {shown} should be refused for this field, but the filter's error is \
                 about another: {err}",
                render(path)
            )),
            _ => {}
        }
    };

    for (path, node) in leaves(&root, &full) {
        let int = |k: &str| node.get(k).and_then(Value::as_u64);
        if let Some(min) = int("minimum") {
            check(&path, json!(min), true, "minimum");
            check(&path, json!(min as i64 - 1), false, "below the minimum");
        }
        if let Some(max) = int("maximum") {
            check(&path, json!(max), true, "maximum");
            check(&path, json!(max + 1), false, "above the maximum");
        }
        // Strings of a given length: the field's example, cut or padded with `x`.
        let example = node
            .pointer("/examples/0")
            .and_then(Value::as_str)
            .unwrap_or("x");
        let sized = |n: u64| {
            let kept: String = example.chars().take(n as usize).collect();
            let pad = (n as usize).saturating_sub(kept.chars().count());
            json!(kept + &"x".repeat(pad))
        };
        if let Some(min) = int("minLength") {
            check(&path, sized(min), true, "minLength");
            if min > 0 {
                check(&path, sized(min - 1), false, "below minLength");
            }
        }
        if let Some(max) = int("maxLength") {
            check(&path, sized(max), true, "maxLength");
            check(&path, sized(max + 1), false, "above maxLength");
        }
        if let Some(values) = node.get("enum").and_then(Value::as_array) {
            for v in values {
                check(&path, v.clone(), true, "enum");
            }
            check(&path, json!("not-one-of-them"), false, "not in the enum");
        }
    }
    assert!(
        problems.is_empty(),
        "{SCHEMA_FILE}:\n- {}",
        problems.join("\n- ")
    );
}

#[test]
fn the_filter_agrees_with_the_shared_probes() {
    let root = schema();
    let full = full_config(&root);
    let probes = read_json(PROBES_FILE);
    let mut problems = Vec::new();
    for probe in probes["probes"].as_array().expect("probes") {
        let path = path_from_json(&probe["path"]);
        let valid = probe["valid"].as_bool().expect("valid");
        let result = parse(&with(&full, &path, probe["value"].clone()));
        match (valid, result) {
            (true, Err(err)) => problems.push(format!("{probe}: the filter refuses it: {err}")),
            (false, Ok(_)) => problems.push(format!("{probe}: the filter accepts it")),
            (false, Err(err)) if !err.field.starts_with(&render(&path)) => {
                problems.push(format!("{probe}: refused for another field: {err}"));
            }
            _ => {}
        }
    }
    assert!(
        problems.is_empty(),
        "{PROBES_FILE}:\n- {}",
        problems.join("\n- ")
    );
}

#[test]
fn the_probe_reading_understands_serdes_messages() {
    // The comparison above is only as good as this reading of the parser's errors.
    let root = schema();
    let config = full_config(&root);
    let top = accepted_fields(&config, &Vec::new()).expect("top level refuses unknown fields");
    assert!(
        top.contains("tenants") && top.contains("collector"),
        "{top:?}"
    );
    assert_eq!(filter_object_at(&config, &vec![key("tenants")]), Some(true));
    assert_eq!(
        filter_object_at(&config, &vec![key("collector")]),
        Some(false)
    );
    let digest = vec![key("tenants"), Step::Index(0), key("api_key_sha256")];
    assert_eq!(filter_object_at(&config, &digest), None);
}
