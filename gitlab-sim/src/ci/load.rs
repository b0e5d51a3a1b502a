//! From text to one merged configuration hash, in GitLab's order (`Gitlab::Ci::Config`): YAML
//! documents and `spec:inputs`, merge keys, `include` (deep-merged under the including file),
//! `extends`, `!reference`.

use serde_yaml_ng::{Mapping, Value};

use super::expr::{self, Vars};
use super::populate::Context;
use super::{Composed, jobs};

/// Files of a project at the pipeline's commit, for `include`, `rules:exists` and
/// `rules:changes`.
pub trait Files: Send + Sync {
    /// The file at `path`, if it exists.
    fn read(&self, path: &str) -> Option<String>;
    /// Every file path at the commit.
    fn list(&self) -> Vec<String>;
    /// Another project the sim hosts, at `git_ref` (its default branch when `None`); the error is
    /// GitLab's message.
    fn project(&self, project: &str, git_ref: Option<&str>) -> Result<Box<dyn Files>, String>;
    /// Files changed by the pipeline's push, or compared with `compare_to`; `None` when GitLab
    /// takes `changes` as true (no push to compare with).
    fn changed(&self, compare_to: Option<&str>) -> Option<Vec<String>>;
    /// The project path and commit these files are from.
    fn origin(&self) -> (String, String);
}

/// No files at all (a configuration given as text alone).
#[derive(Debug, Clone, Copy)]
pub struct NoFiles;

impl Files for NoFiles {
    fn read(&self, _: &str) -> Option<String> {
        None
    }
    fn list(&self) -> Vec<String> {
        Vec::new()
    }
    fn project(&self, project: &str, _: Option<&str>) -> Result<Box<dyn Files>, String> {
        Err(project_not_found(project))
    }
    fn changed(&self, _: Option<&str>) -> Option<Vec<String>> {
        None
    }
    fn origin(&self) -> (String, String) {
        (String::new(), String::new())
    }
}

fn project_not_found(project: &str) -> String {
    format!(
        "Project `{project}` not found or access denied! Make sure any includes in the pipeline configuration are correctly defined."
    )
}

/// One included file, as lint's `includes` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncludedFile {
    /// `local`, `project`, `remote`, `template`, `component`.
    pub kind: String,
    /// The path or address.
    pub location: String,
    /// The including file's project.
    pub context_project: String,
    /// The including file's commit.
    pub context_sha: String,
    /// For `project` includes: the project and ref.
    pub extra: Vec<(String, String)>,
}

const MAX_INCLUDES: usize = 150;
const MAX_DEPTH: usize = 100;

struct IncludeState {
    count: usize,
    included: Vec<IncludedFile>,
}

/// Reads, includes, extends and resolves a configuration, then checks it and defines its jobs.
/// `ctx` is the pipeline the configuration is read for (`include:rules`, variables in include
/// paths, pipeline `inputs`). Errors are GitLab's messages.
pub fn compose(text: &str, files: &dyn Files, ctx: &Context) -> Result<Composed, Vec<String>> {
    let provided: Option<Mapping> = if ctx.inputs.is_empty() {
        None
    } else {
        Some(ctx.inputs.iter().map(|(k, v)| (Value::String(k.clone()), json_to_yaml(v))).collect())
    };
    let root = load_file(text, provided.as_ref(), None).map_err(|e| vec![e])?;
    let Value::Mapping(mut root) = root else {
        return Err(vec!["Invalid configuration format".into()]);
    };
    let mut state = IncludeState { count: 0, included: Vec::new() };
    let vars = include_vars(ctx);
    let included = take_includes(&mut root, files, ctx, &vars, &mut state, 0)?;
    let mut merged = Value::Mapping(Mapping::new());
    for inc in included {
        deep_merge(&mut merged, inc);
    }
    deep_merge(&mut merged, Value::Mapping(root));
    let Value::Mapping(mut root) = merged else { unreachable!("merged mappings stay a mapping") };
    resolve_extends(&mut root).map_err(|e| vec![e])?;
    let snapshot = Value::Mapping(root.clone());
    let resolved = resolve_references(Value::Mapping(root), &snapshot, 0).map_err(|e| vec![e])?;
    let Value::Mapping(root) = resolved else { unreachable!("a mapping stays a mapping") };
    let merged_yaml = serde_yaml_ng::to_string(&Value::Mapping(root.clone())).unwrap_or_default();
    let mut composed = jobs::build(&root)?;
    composed.merged_yaml = merged_yaml;
    composed.includes = state.included;
    Ok(composed)
}

/// Variables for `include:rules` and include paths: predefined and pipeline variables
/// (GitLab: project, group, instance, pipeline and predefined variables).
fn include_vars(ctx: &Context) -> Vars {
    let mut vars = ctx.predefined.clone();
    vars.extend(ctx.pipeline_variables.clone());
    vars
}

pub(super) fn json_to_yaml(v: &serde_json::Value) -> Value {
    serde_yaml_ng::to_value(v).unwrap_or(Value::Null)
}

/// Parses one file: an optional `spec:` header document, then the content, with inputs
/// interpolated, unknown tags dropped and merge keys applied. `label` names an included file
/// for its YAML error.
fn load_file(text: &str, inputs: Option<&Mapping>, label: Option<&str>) -> Result<Value, String> {
    let mut docs = Vec::new();
    for doc in serde_yaml_ng::Deserializer::from_str(text) {
        let value = <Value as serde::Deserialize>::deserialize(doc).map_err(|e| match label {
            Some(l) => format!("Included file `{l}` does not have valid YAML syntax!"),
            None => yaml_error(&e),
        })?;
        docs.push(value);
    }
    let (header, content) = match docs.len() {
        0 => (None, Value::Null),
        1 => (None, docs.pop().unwrap_or(Value::Null)),
        2 => {
            let content = docs.pop().unwrap_or(Value::Null);
            let header = docs.pop().unwrap_or(Value::Null);
            match &header {
                Value::Mapping(m) if m.contains_key("spec") => (Some(header), content),
                _ => return Err("Invalid configuration format".into()),
            }
        }
        _ => return Err("Invalid configuration format".into()),
    };
    if content.is_null() && label.is_none() && header.is_none() {
        return Err("Please provide content of .gitlab-ci.yml".into());
    }
    let spec = match &header {
        Some(Value::Mapping(h)) => match h.get("spec") {
            Some(Value::Mapping(spec)) => {
                if let Some(bad) = spec.keys().filter_map(Value::as_str).find(|k| !matches!(*k, "inputs" | "include")) {
                    return Err(format!("header:spec config contains unknown keys: {bad}"));
                }
                spec.get("inputs").cloned()
            }
            _ => return Err("header:spec config should be a hash".into()),
        },
        _ => None,
    };
    let values = inputs_values(spec.as_ref(), inputs)?;
    let content = strip_tags(content);
    let content = match values {
        Some(values) => interpolate(content, &values)?,
        None => {
            check_no_interpolation(&content)?;
            content
        }
    };
    merge_keys(content)
}

fn yaml_error(e: &serde_yaml_ng::Error) -> String {
    // GitLab shows Psych's message: `(<unknown>): did not find expected key while parsing a block
    // mapping at line 3 column 1`. libyaml's problem and position read the same here.
    let text = e.to_string();
    match e.location() {
        Some(loc) => {
            let problem = text.split(" at line ").next().unwrap_or(&text);
            format!("(<unknown>): {problem} at line {} column {}", loc.line(), loc.column())
        }
        None => format!("(<unknown>): {text}"),
    }
}

/// The value of each declared input: the provided one (checked) or its default.
fn inputs_values(spec: Option<&Value>, provided: Option<&Mapping>) -> Result<Option<Mapping>, String> {
    let Some(spec) = spec else {
        if provided.is_some_and(|p| !p.is_empty()) {
            return Err("Given inputs not defined in the `spec` section of the included configuration file".into());
        }
        return Ok(None);
    };
    let Value::Mapping(spec) = spec else { return Err("header:spec:inputs config must be a hash".into()) };
    let empty = Mapping::new();
    let provided = provided.unwrap_or(&empty);
    let unknown: Vec<&str> = provided.keys().filter_map(Value::as_str).filter(|k| !spec.contains_key(*k)).collect();
    if !unknown.is_empty() {
        return Err(format!("unknown input arguments: {}", unknown.join(", ")));
    }
    let mut out = Mapping::new();
    for (name, decl) in spec {
        let name_s = name.as_str().unwrap_or_default();
        let decl = match decl {
            Value::Mapping(m) => m.clone(),
            Value::Null => Mapping::new(),
            _ => return Err(format!("`{name_s}` input: definition must be a hash")),
        };
        let value = match provided.get(name).or_else(|| decl.get("default")) {
            Some(v) => v.clone(),
            None => return Err(format!("`{name_s}` input: required value has not been provided")),
        };
        let kind = decl.get("type").and_then(Value::as_str).unwrap_or("string");
        let ok = match kind {
            "string" => value.is_string(),
            "number" => value.is_number(),
            "boolean" => value.is_bool(),
            "array" => value.is_sequence(),
            other => return Err(format!("`{name_s}` input: unknown input type `{other}`")),
        };
        if !ok {
            return Err(format!("`{name_s}` input: provided value is not a {kind}"));
        }
        if let Some(Value::Sequence(options)) = decl.get("options")
            && !options.contains(&value)
        {
            return Err(format!(
                "`{name_s}` input: `{}` cannot be used because it is not in the list of allowed options",
                scalar_text(&value)
            ));
        }
        if let Some(re) = decl.get("regex").and_then(Value::as_str) {
            let re = re.trim_start_matches('/').trim_end_matches('/');
            let matches = regex::Regex::new(re).map(|r| r.is_match(&scalar_text(&value))).unwrap_or(false);
            if !matches {
                return Err(format!("`{name_s}` input: provided value does not match required RegEx pattern"));
            }
        }
        out.insert(name.clone(), value);
    }
    Ok(Some(out))
}

pub(super) fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Null => String::new(),
        other => serde_yaml_ng::to_string(other).unwrap_or_default().trim().to_owned(),
    }
}

/// Replaces `$[[ inputs.NAME ]]` (with optional `| expand_vars`, `| truncate(a,b)`,
/// `| posix_escape`) in keys and values. A value that is exactly one interpolation keeps the
/// input's type.
fn interpolate(v: Value, inputs: &Mapping) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) => interpolate_str(&s, inputs)?,
        Value::Sequence(items) => {
            Value::Sequence(items.into_iter().map(|i| interpolate(i, inputs)).collect::<Result<_, _>>()?)
        }
        Value::Mapping(m) => {
            let mut out = Mapping::new();
            for (k, v) in m {
                let k = match k {
                    Value::String(s) => Value::String(scalar_text(&interpolate_str(&s, inputs)?)),
                    other => other,
                };
                out.insert(k, interpolate(v, inputs)?);
            }
            Value::Mapping(out)
        }
        Value::Tagged(mut t) => {
            t.value = interpolate(t.value, inputs)?;
            Value::Tagged(t)
        }
        other => other,
    })
}

fn interpolate_str(s: &str, inputs: &Mapping) -> Result<Value, String> {
    if !s.contains("$[[") {
        return Ok(Value::String(s.to_owned()));
    }
    let mut out = String::new();
    let mut rest = s;
    let mut whole: Option<Value> = None;
    while let Some(start) = rest.find("$[[") {
        let Some(end) = rest[start..].find("]]") else { break };
        let inner = rest[start + 3..start + end].trim();
        let mut parts = inner.split('|').map(str::trim);
        let access = parts.next().unwrap_or_default();
        let Some(name) = access.strip_prefix("inputs.") else {
            if access.starts_with("matrix.") {
                // `needs:parallel:matrix` expressions are resolved per job, later.
                out.push_str(&rest[..start + end + 2]);
                rest = &rest[start + end + 2..];
                continue;
            }
            return Err(format!("unknown interpolation provided: `{access}`"));
        };
        let Some(value) = inputs.get(name) else {
            return Err(format!("unknown interpolation key: `{name}`"));
        };
        let mut value = value.clone();
        for f in parts {
            let text = scalar_text(&value);
            value = Value::String(if f == "expand_vars" {
                text
            } else if f == "posix_escape" {
                text.chars().map(|c| if c.is_alphanumeric() { c.to_string() } else { format!("\\{c}") }).collect()
            } else if let Some(args) = f.strip_prefix("truncate(").and_then(|a| a.strip_suffix(')')) {
                let nums: Vec<usize> = args.split(',').filter_map(|n| n.trim().parse().ok()).collect();
                let (off, len) = (nums.first().copied().unwrap_or(0), nums.get(1).copied().unwrap_or(usize::MAX));
                text.chars().skip(off).take(len).collect()
            } else {
                return Err(format!(
                    "no function matching `{f}`: check that the function name, arguments, and types are correct"
                ));
            });
        }
        if start == 0 && end + 2 == rest.len() && out.is_empty() {
            whole = Some(value.clone());
        }
        out.push_str(&rest[..start]);
        out.push_str(&scalar_text(&value));
        rest = &rest[start + end + 2..];
    }
    out.push_str(rest);
    Ok(match whole {
        Some(v) if rest.is_empty() => v,
        _ => Value::String(out),
    })
}

fn check_no_interpolation(v: &Value) -> Result<(), String> {
    match v {
        Value::String(s) => {
            if let Some(start) = s.find("$[[") {
                let inner = s[start + 3..].split("]]").next().unwrap_or_default().trim();
                if inner.starts_with("inputs.") {
                    return Err("inputs are not defined in the `spec` section of the configuration file".into());
                }
            }
            Ok(())
        }
        Value::Sequence(items) => items.iter().try_for_each(check_no_interpolation),
        Value::Mapping(m) => m.iter().try_for_each(|(k, v)| {
            check_no_interpolation(k)?;
            check_no_interpolation(v)
        }),
        Value::Tagged(t) => check_no_interpolation(&t.value),
        _ => Ok(()),
    }
}

/// Drops tags other than `!reference` (keeping their values).
fn strip_tags(v: Value) -> Value {
    match v {
        Value::Tagged(t) if t.tag == "reference" => Value::Tagged(t),
        Value::Tagged(t) => strip_tags(t.value),
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(strip_tags).collect()),
        Value::Mapping(m) => Value::Mapping(m.into_iter().map(|(k, v)| (k, strip_tags(v))).collect()),
        other => other,
    }
}

/// YAML merge keys (`<<: *anchor`, `<<: [*a, *b]`), innermost first so a merged mapping's own
/// merges are applied before it is merged (serde_yaml_ng's `apply_merge` leaves those behind).
/// Explicit keys win; among several merged mappings the first wins, as in Psych.
fn merge_keys(v: Value) -> Result<Value, String> {
    Ok(match v {
        Value::Mapping(m) => {
            let mut own = Mapping::new();
            let mut merged: Vec<Mapping> = Vec::new();
            for (k, v) in m {
                let v = merge_keys(v)?;
                if k.as_str() == Some("<<") {
                    match v {
                        Value::Mapping(one) => merged.push(one),
                        Value::Sequence(list) => {
                            for item in list {
                                match item {
                                    Value::Mapping(one) => merged.push(one),
                                    _ => return Err("Invalid configuration format: merge key expects mappings".into()),
                                }
                            }
                        }
                        _ => return Err("Invalid configuration format: merge key expects a mapping".into()),
                    }
                } else {
                    own.insert(k, v);
                }
            }
            let mut out = Mapping::new();
            for one in merged {
                for (k, v) in one {
                    if !out.contains_key(&k) {
                        out.insert(k, v);
                    }
                }
            }
            for (k, v) in own {
                out.insert(k, v);
            }
            Value::Mapping(out)
        }
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(merge_keys).collect::<Result<_, _>>()?),
        Value::Tagged(mut t) => {
            t.value = merge_keys(t.value)?;
            Value::Tagged(t)
        }
        other => other,
    })
}

/// Hash#deep_merge: mappings merge key by key, anything else is replaced.
pub(super) fn deep_merge(base: &mut Value, over: Value) {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) if existing.is_mapping() && v.is_mapping() => deep_merge(existing, v),
                    _ => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Removes `include` from `root` and returns the included files' configurations (each with its
/// own includes merged under it), in order.
fn take_includes(
    root: &mut Mapping,
    files: &dyn Files,
    ctx: &Context,
    vars: &Vars,
    state: &mut IncludeState,
    depth: usize,
) -> Result<Vec<Value>, Vec<String>> {
    let Some(raw) = root.remove("include") else { return Ok(Vec::new()) };
    if depth >= MAX_DEPTH {
        return Err(vec![format!("Maximum of {MAX_DEPTH} nested includes are allowed!")]);
    }
    let entries = match raw {
        Value::Sequence(items) => items,
        Value::Null => Vec::new(),
        other => vec![other],
    };
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for entry in entries {
        match include_one(entry, files, ctx, vars, state, depth) {
            Ok(configs) => out.extend(configs),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() { Ok(out) } else { Err(errors) }
}

fn include_one(
    entry: Value,
    files: &dyn Files,
    ctx: &Context,
    vars: &Vars,
    state: &mut IncludeState,
    depth: usize,
) -> Result<Vec<Value>, Vec<String>> {
    let map = match entry {
        Value::String(s) => {
            let key = if s.starts_with("http://") || s.starts_with("https://") { "remote" } else { "local" };
            Mapping::from_iter([(Value::String(key.into()), Value::String(s))])
        }
        Value::Mapping(m) => m,
        other => {
            return Err(vec![format!(
                "Include `{}` needs to match exactly one accessor!",
                serde_json::to_string(&other).unwrap_or_default()
            )]);
        }
    };
    if let Some(rules) = map.get("rules")
        && !include_rules_pass(rules, files, vars)?
    {
        return Ok(Vec::new());
    }
    let inputs = match map.get("inputs").or_else(|| map.get("with")) {
        Some(Value::Mapping(m)) => Some(m.clone()),
        _ => None,
    };
    let accessors: Vec<&str> = ["local", "project", "remote", "template", "component", "artifact"]
        .into_iter()
        .filter(|k| map.contains_key(*k))
        .collect();
    if accessors.len() != 1 {
        return Err(vec![format!(
            "Include `{}` needs to match exactly one accessor!",
            serde_json::to_string(&map).unwrap_or_default()
        )]);
    }
    let (origin_project, origin_sha) = files.origin();
    let get = |k: &str| map.get(k).map(scalar_text).map(|s| expr::expand(&s, vars));
    let mut record = |kind: &str, location: &str, extra: Vec<(String, String)>| {
        state.included.push(IncludedFile {
            kind: kind.into(),
            location: location.into(),
            context_project: origin_project.clone(),
            context_sha: origin_sha.clone(),
            extra,
        });
    };
    let mut loaded: Vec<(String, Box<dyn Files>, bool, String)> = Vec::new(); // label, files, same project, text
    match accessors[0] {
        "local" => {
            let location = get("local").unwrap_or_default();
            let path = location.trim_start_matches('/').to_owned();
            let paths = if path.contains('*') {
                let pattern = glob::Pattern::new(&path).map_err(|e| vec![e.to_string()])?;
                let opts = glob::MatchOptions {
                    case_sensitive: true,
                    require_literal_separator: true,
                    require_literal_leading_dot: false,
                };
                let found: Vec<String> = files
                    .list()
                    .into_iter()
                    .filter(|f| pattern.matches_with(f, opts))
                    .filter(|f| f.ends_with(".yml") || f.ends_with(".yaml"))
                    .collect();
                if found.is_empty() {
                    return Err(vec![format!("Included file `{location}` does not exist!")]);
                }
                found
            } else {
                vec![path]
            };
            for p in paths {
                if !(p.ends_with(".yml") || p.ends_with(".yaml")) {
                    return Err(vec![format!("Included file `{p}` does not have YAML extension!")]);
                }
                let text = files.read(&p).ok_or_else(|| vec![format!("Local file `{p}` does not exist!")])?;
                if text.trim().is_empty() {
                    return Err(vec![format!("Local file `{p}` is empty!")]);
                }
                record("local", &p, Vec::new());
                loaded.push((p, Box::new(Same(files)), true, text));
            }
        }
        "project" => {
            let project = get("project").unwrap_or_default();
            let git_ref = get("ref");
            let other = files.project(&project, git_ref.as_deref()).map_err(|e| vec![e])?;
            let list = match map.get("file") {
                Some(Value::Sequence(items)) => items.iter().map(scalar_text).collect(),
                Some(v) => vec![scalar_text(v)],
                None => return Err(vec!["include:project config should include file".into()]),
            };
            let shared: std::sync::Arc<dyn Files> = std::sync::Arc::from(other);
            for f in list {
                let f = expr::expand(&f, vars).trim_start_matches('/').to_owned();
                let text =
                    shared.read(&f).ok_or_else(|| vec![format!("Project `{project}` file `{f}` does not exist!")])?;
                if text.trim().is_empty() {
                    return Err(vec![format!("Project `{project}` file `{f}` is empty!")]);
                }
                record(
                    "file",
                    &f,
                    vec![
                        ("project".into(), project.clone()),
                        ("ref".into(), git_ref.clone().unwrap_or_else(|| "HEAD".into())),
                    ],
                );
                loaded.push((f, Box::new(SharedFiles(shared.clone())), false, text));
            }
        }
        "remote" => {
            let url = get("remote").unwrap_or_default();
            // The sim has no internet: GitLab's answer when the fetch fails.
            return Err(vec![format!("Remote file `{url}` could not be fetched because of a socket error!")]);
        }
        "template" => {
            let name = get("template").unwrap_or_default();
            // GitLab's templates are not shipped with the sim; this is GitLab's answer for a name it
            // does not have.
            return Err(vec![format!("Template file `{name}` is not a valid location!")]);
        }
        "component" => {
            let name = get("component").unwrap_or_default();
            return Err(vec![format!(
                "Component '{name}' - project does not exist or you don't have sufficient permissions"
            )]);
        }
        _ => {
            return Err(vec![
                "include:artifact can only be used in a trigger:include of a child pipeline configuration".into(),
            ]);
        }
    }
    let mut out = Vec::new();
    for (label, inner_files, _same, text) in loaded {
        state.count += 1;
        if state.count > MAX_INCLUDES {
            return Err(vec![format!("Maximum of {MAX_INCLUDES} nested includes are allowed!")]);
        }
        let value = load_file(&text, inputs.as_ref(), Some(&label)).map_err(|e| vec![e])?;
        let mut map = match value {
            Value::Mapping(m) => m,
            Value::Null => Mapping::new(),
            _ => return Err(vec![format!("Included file `{label}` does not have valid YAML syntax!")]),
        };
        let nested = take_includes(&mut map, inner_files.as_ref(), ctx, vars, state, depth + 1)?;
        let mut merged = Value::Mapping(Mapping::new());
        for n in nested {
            deep_merge(&mut merged, n);
        }
        deep_merge(&mut merged, Value::Mapping(map));
        out.push(merged);
    }
    Ok(out)
}

/// The same project's files, borrowed for a nested include.
struct Same<'a>(&'a dyn Files);

impl Files for Same<'_> {
    fn read(&self, path: &str) -> Option<String> {
        self.0.read(path)
    }
    fn list(&self) -> Vec<String> {
        self.0.list()
    }
    fn project(&self, project: &str, git_ref: Option<&str>) -> Result<Box<dyn Files>, String> {
        self.0.project(project, git_ref)
    }
    fn changed(&self, compare_to: Option<&str>) -> Option<Vec<String>> {
        self.0.changed(compare_to)
    }
    fn origin(&self) -> (String, String) {
        self.0.origin()
    }
}

struct SharedFiles(std::sync::Arc<dyn Files>);

impl Files for SharedFiles {
    fn read(&self, path: &str) -> Option<String> {
        self.0.read(path)
    }
    fn list(&self) -> Vec<String> {
        self.0.list()
    }
    fn project(&self, project: &str, git_ref: Option<&str>) -> Result<Box<dyn Files>, String> {
        self.0.project(project, git_ref)
    }
    fn changed(&self, compare_to: Option<&str>) -> Option<Vec<String>> {
        self.0.changed(compare_to)
    }
    fn origin(&self) -> (String, String) {
        self.0.origin()
    }
}

fn include_rules_pass(rules: &Value, files: &dyn Files, vars: &Vars) -> Result<bool, Vec<String>> {
    let Value::Sequence(rules) = rules else { return Err(vec!["include rules should be an array of hashes".into()]) };
    for rule in rules {
        let Value::Mapping(rule) = rule else { return Err(vec!["include rule should be a hash".into()]) };
        let mut ok = true;
        if let Some(cond) = rule.get("if").and_then(Value::as_str) {
            expr::parse(cond).map_err(|e| vec![format!("include:rules:rule if {e}")])?;
            ok &= expr::evaluate(cond, vars);
        }
        if let Some(exists) = rule.get("exists") {
            ok &= super::populate::exists_match(exists, files, vars);
        }
        if let Some(changes) = rule.get("changes") {
            ok &= super::populate::changes_match(changes, files, vars);
        }
        if ok {
            return Ok(rule.get("when").and_then(Value::as_str) != Some("never"));
        }
    }
    Ok(false)
}

/// `extends`, as `Gitlab::Ci::Config::Extendable`: each base (itself extended first) is
/// deep-merged in order, then the job over them. Up to 10 levels.
fn resolve_extends(root: &mut Mapping) -> Result<(), String> {
    let keys: Vec<Value> = root.keys().cloned().collect();
    for key in keys {
        let mut path = Vec::new();
        extend_one(root, &key, &mut path)?;
    }
    Ok(())
}

fn extend_one(root: &mut Mapping, key: &Value, path: &mut Vec<String>) -> Result<Value, String> {
    let name = scalar_text(key);
    let value = root.get(key).cloned().unwrap_or(Value::Null);
    let Value::Mapping(map) = &value else { return Ok(value) };
    let Some(ext) = map.get("extends").cloned() else { return Ok(value) };
    let job = path.first().cloned().unwrap_or_else(|| name.clone());
    if path.contains(&name) {
        return Err(format!("{job}: circular dependency detected in `extends`"));
    }
    if path.len() >= 10 {
        return Err(format!("{job}: nesting too deep in `extends`"));
    }
    let bases: Vec<String> = match &ext {
        Value::String(s) => vec![s.clone()],
        Value::Sequence(items) if items.iter().all(Value::is_string) => items.iter().map(scalar_text).collect(),
        _ => return Err(format!("jobs:{name} extends should be an array of strings or a string")),
    };
    path.push(name.clone());
    let mut acc = Value::Mapping(Mapping::new());
    for base in bases {
        let base_key = Value::String(base.clone());
        match root.get(&base_key) {
            None => return Err(format!("{job}: unknown key in `extends` ({base})")),
            Some(v) if !v.is_mapping() => return Err(format!("{job}: invalid base hash in `extends` ({base})")),
            Some(_) => {}
        }
        let resolved = extend_one(root, &base_key, path)?;
        deep_merge(&mut acc, resolved);
    }
    path.pop();
    deep_merge(&mut acc, value);
    root.insert(key.clone(), acc.clone());
    Ok(acc)
}

/// `!reference [job, key, ...]`, resolved against the extended configuration, nested up to 10
/// levels.
fn resolve_references(v: Value, root: &Value, depth: usize) -> Result<Value, String> {
    Ok(match v {
        Value::Tagged(t) if t.tag == "reference" => {
            let Value::Sequence(path) = &t.value else {
                return Err("!reference tags must be an array of strings".into());
            };
            let names: Vec<String> = path.iter().map(scalar_text).collect();
            let shown = format!("[{}]", names.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", "));
            if depth >= 10 {
                return Err(format!("!reference {shown} is part of a circular chain"));
            }
            let mut node = root;
            for n in &names {
                node = match node {
                    Value::Mapping(m) => {
                        m.get(n.as_str()).ok_or_else(|| format!("!reference {shown} could not be found"))?
                    }
                    _ => return Err(format!("!reference {shown} could not be found")),
                };
            }
            resolve_references(node.clone(), root, depth + 1)?
        }
        Value::Tagged(t) => resolve_references(t.value, root, depth)?,
        Value::Sequence(items) => {
            Value::Sequence(items.into_iter().map(|i| resolve_references(i, root, depth)).collect::<Result<_, _>>()?)
        }
        Value::Mapping(m) => {
            let mut out = Mapping::new();
            for (k, v) in m {
                out.insert(k, resolve_references(v, root, depth)?);
            }
            Value::Mapping(out)
        }
        other => other,
    })
}
