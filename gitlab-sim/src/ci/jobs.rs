//! The merged configuration checked as GitLab's config entries check it (with their messages),
//! and turned into job definitions: defaults inherited, `parallel` expanded into GitLab's job
//! names, `needs` and `dependencies` resolved to those names.

use std::collections::BTreeMap;

use serde_yaml_ng::{Mapping, Value};

use super::load::scalar_text;
use super::{ArtifactsSpec, Composed, Inherit, JobSpec, Need, RetrySpec, TriggerSpec, When, expr, parse_duration};

/// A job before any pipeline's rules.
#[derive(Debug, Clone)]
pub struct JobDef {
    /// The job as defined (job-level `when`, `allow_failure`, `needs`).
    pub spec: JobSpec,
    /// `rules`.
    pub rules: Option<Vec<Rule>>,
    /// `only`.
    pub only: Option<Policy>,
    /// `except`.
    pub except: Option<Policy>,
    /// Whether `allow_failure` was written (a rule's `when: manual` otherwise means false).
    pub allow_failure_given: bool,
    /// Whether `when` was written.
    pub when_given: bool,
    /// Job variables with `expand: false`.
    pub raw_variables: Vec<String>,
}

/// One rule of `rules` or `workflow:rules`.
#[derive(Debug, Clone, Default)]
pub struct Rule {
    /// `if`.
    pub condition: Option<String>,
    /// `changes` (as written: a list or `{paths, compare_to}`).
    pub changes: Option<Value>,
    /// `exists` (a list or `{paths}`).
    pub exists: Option<Value>,
    /// `when`.
    pub when: Option<When>,
    /// `allow_failure`.
    pub allow_failure: Option<bool>,
    /// `variables`.
    pub variables: BTreeMap<String, String>,
    /// `needs`, resolved.
    pub needs: Option<Vec<Need>>,
    /// `start_in`.
    pub start_in: Option<std::time::Duration>,
    /// `interruptible`.
    pub interruptible: Option<bool>,
    /// `needs` as written (resolved once every job is known).
    raw_needs: Option<Value>,
}

/// `only` or `except`.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// `refs`.
    pub refs: Option<Vec<String>>,
    /// `variables` expressions.
    pub variables: Option<Vec<String>>,
    /// `changes` patterns.
    pub changes: Option<Value>,
}

/// `workflow:`.
#[derive(Debug, Clone, Default)]
pub struct Workflow {
    /// `rules`.
    pub rules: Option<Vec<Rule>>,
    /// `name`.
    pub name: Option<String>,
}

const ROOT_KEYS: [&str; 11] = [
    "default",
    "include",
    "before_script",
    "image",
    "services",
    "after_script",
    "variables",
    "stages",
    "types",
    "cache",
    "workflow",
];
const DEFAULT_KEYS: [&str; 12] = [
    "after_script",
    "artifacts",
    "before_script",
    "cache",
    "hooks",
    "id_tokens",
    "image",
    "interruptible",
    "retry",
    "services",
    "tags",
    "timeout",
];
const JOB_KEYS: [&str; 37] = [
    "tags",
    "script",
    "type",
    "image",
    "services",
    "start_in",
    "artifacts",
    "cache",
    "dependencies",
    "before_script",
    "after_script",
    "environment",
    "coverage",
    "retry",
    "parallel",
    "interruptible",
    "timeout",
    "release",
    "secrets",
    "extends",
    "stage",
    "only",
    "except",
    "rules",
    "variables",
    "inherit",
    "allow_failure",
    "when",
    "needs",
    "resource_group",
    "id_tokens",
    "hooks",
    "pages",
    "publish",
    "identity",
    "manual_confirmation",
    "dast_configuration",
];
const BRIDGE_KEYS: [&str; 15] = [
    "trigger",
    "allow_failure",
    "when",
    "needs",
    "extends",
    "stage",
    "only",
    "except",
    "rules",
    "variables",
    "inherit",
    "resource_group",
    "environment",
    "parallel",
    "manual_confirmation",
];
const RULE_KEYS: [&str; 9] =
    ["if", "changes", "exists", "when", "start_in", "allow_failure", "variables", "needs", "interruptible"];

type Errors = Vec<String>;
/// Matrix values of one parallel instance, in written order.
type Matrix = Vec<(String, String)>;
/// Each job instance: name, name before `parallel`, matrix values, stage.
type Entry = (String, String, Matrix, String);
type Index = [Entry];

fn s(v: &str) -> Value {
    Value::String(v.to_owned())
}

fn unknown_keys(map: &Mapping, allowed: &[&str]) -> Vec<String> {
    map.keys().map(scalar_text).filter(|k| !allowed.contains(&k.as_str())).collect()
}

/// `Entry::Commands`: a string or a nested array of strings (up to 10 levels).
fn commands(v: &Value, depth: usize) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Number(_) | Value::Bool(_) if depth > 0 => Some(vec![scalar_text(v)]),
        Value::Sequence(items) if depth < 10 => {
            let mut out = Vec::new();
            for i in items {
                out.extend(commands(i, depth + 1)?);
            }
            Some(out)
        }
        _ => None,
    }
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Sequence(items) => items.iter().map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

fn string_or_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        other => string_list(other),
    }
}

/// `variables:` of the root (`description`, `options` allowed) or a job (`value`, `expand`).
/// Returns the values and the names not to expand.
pub(super) fn variables(v: &Value, what: &str, root: bool) -> Result<(BTreeMap<String, String>, Vec<String>), String> {
    let err = || format!("{what} config should be a hash of key value pairs, value can be a hash");
    let Value::Mapping(map) = v else {
        return if v.is_null() { Ok(Default::default()) } else { Err(err()) };
    };
    let mut out = BTreeMap::new();
    let mut raw = Vec::new();
    for (k, v) in map {
        let key = k.as_str().map(str::to_owned).or_else(|| k.as_i64().map(|n| n.to_string())).ok_or_else(err)?;
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Null => String::new(),
            Value::Mapping(m) => {
                let allowed: &[&str] =
                    if root { &["value", "description", "expand", "options"] } else { &["value", "expand"] };
                let bad = unknown_keys(m, allowed);
                if !bad.is_empty() {
                    return Err(format!("{what} config uses invalid data keys: {}", bad.join(", ")));
                }
                if m.get("expand") == Some(&Value::Bool(false)) {
                    raw.push(key.clone());
                }
                let value = match m.get("value") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Number(n)) => n.to_string(),
                    None | Some(Value::Null) => String::new(),
                    Some(_) => return Err(err()),
                };
                if let Some(Value::Sequence(options)) = m.get("options")
                    && !options.iter().any(|o| scalar_text(o) == value)
                {
                    return Err(format!("{what} config value must be present in options"));
                }
                value
            }
            _ => return Err(err()),
        };
        out.insert(key, value);
    }
    Ok((out, raw))
}

struct Defaults {
    map: Mapping,
}

impl Defaults {
    fn get(&self, key: &str) -> Option<&Value> {
        self.map.get(key)
    }
}

/// Checks the merged root and defines its jobs.
pub(super) fn build(root: &Mapping) -> Result<Composed, Errors> {
    let mut errors: Errors = Vec::new();
    let mut stages: Vec<String> = vec!["build".into(), "test".into(), "deploy".into()];
    if let Some(v) = root.get("stages").or_else(|| root.get("types")) {
        match string_list(v) {
            Some(list) => stages = list,
            None => errors.push("stages config should be an array of strings".into()),
        }
    }
    stages.retain(|s| s != ".pre" && s != ".post");
    stages.insert(0, ".pre".into());
    stages.push(".post".into());
    let (global_vars, raw_globals) = match root.get("variables") {
        Some(v) => variables(v, "variables", true).unwrap_or_else(|e| {
            errors.push(e);
            Default::default()
        }),
        None => Default::default(),
    };
    // `default:`, with the deprecated top-level keys under it.
    let mut defaults = Mapping::new();
    for key in ["image", "services", "cache", "before_script", "after_script"] {
        if let Some(v) = root.get(key) {
            defaults.insert(s(key), v.clone());
        }
    }
    match root.get("default") {
        Some(Value::Mapping(d)) => {
            let bad = unknown_keys(d, &DEFAULT_KEYS);
            if !bad.is_empty() {
                errors.push(format!("default config contains unknown keys: {}", bad.join(", ")));
            }
            for (k, v) in d {
                defaults.insert(k.clone(), v.clone());
            }
        }
        Some(Value::Null) | None => {}
        Some(_) => errors.push("default config should be a hash".into()),
    }
    let defaults = Defaults { map: defaults };
    let workflow = match root.get("workflow") {
        Some(Value::Mapping(w)) => {
            let bad = unknown_keys(w, &["rules", "name", "auto_cancel"]);
            if !bad.is_empty() {
                errors.push(format!("workflow config contains unknown keys: {}", bad.join(", ")));
            }
            let rules = match w.get("rules") {
                Some(r) => {
                    match rules(r, "workflow", &["if", "changes", "exists", "when", "variables", "auto_cancel"], true) {
                        Ok(r) => Some(r),
                        Err(e) => {
                            errors.push(e);
                            None
                        }
                    }
                }
                None => None,
            };
            Some(Workflow { rules, name: w.get("name").map(scalar_text) })
        }
        None => None,
        Some(_) => {
            errors.push("workflow config should be a hash".into());
            None
        }
    };
    let mut defs: Vec<JobDef> = Vec::new();
    let mut matrices: Vec<Vec<(String, String)>> = Vec::new();
    let mut raw_needs: Vec<Option<Value>> = Vec::new();
    let mut raw_deps: Vec<Option<Vec<String>>> = Vec::new();
    let mut visible = 0;
    for (k, v) in root {
        let name = scalar_text(k);
        if ROOT_KEYS.contains(&name.as_str()) || name.starts_with('.') {
            continue;
        }
        visible += 1;
        let Value::Mapping(map) = v else {
            errors.push(format!("jobs:{name} config should implement the script:, run:, or trigger: keyword"));
            continue;
        };
        if name.len() > 255 {
            errors.push(format!("jobs:{name} name is too long (maximum is 255 characters)"));
            continue;
        }
        match job(&name, map, &stages, &defaults) {
            Ok((def, instances, needs, deps)) => {
                for (inst, matrix) in instances {
                    defs.push(JobDef { spec: inst, ..def.clone() });
                    matrices.push(matrix);
                    raw_needs.push(needs.clone());
                    raw_deps.push(deps.clone());
                }
            }
            Err(e) => errors.extend(e),
        }
    }
    if visible == 0 && errors.is_empty() {
        errors.push("jobs config should contain at least one visible job".into());
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    // `needs` and `dependencies` resolved to job names, now that every job is known.
    let index: Vec<Entry> = defs
        .iter()
        .zip(&matrices)
        .map(|(d, m)| (d.spec.name.clone(), d.spec.base_name.clone(), m.clone(), d.spec.stage.clone()))
        .collect();
    let stage_of = |stage: &str| stages.iter().position(|s| s == stage);
    for (i, def) in defs.iter_mut().enumerate() {
        let name = def.spec.name.clone();
        let my_stage = stage_of(&def.spec.stage);
        if let Some(raw) = &raw_needs[i] {
            match resolve_needs(&name, raw, &index, &matrices[i]) {
                Ok(needs) => {
                    for n in &needs {
                        let their = index.iter().find(|x| x.0 == n.job).and_then(|x| stage_of(&x.3));
                        if their > my_stage {
                            errors
                                .push(format!("{name} job: need {} is not defined in current or prior stages", n.job));
                        }
                    }
                    def.spec.needs = Some(needs.iter().map(|n| n.job.clone()).collect());
                    def.spec.need_details = needs;
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(rules) = &mut def.rules {
            for rule in rules.iter_mut() {
                if let Some(raw) = &rule.raw_needs {
                    match resolve_needs(&name, raw, &index, &matrices[i]) {
                        Ok(n) => rule.needs = Some(n),
                        Err(e) => errors.push(e),
                    }
                }
            }
        }
        if let Some(deps) = &raw_deps[i] {
            let mut resolved = Vec::new();
            for d in deps {
                let matches: Vec<&Entry> = index.iter().filter(|x| x.0 == *d || (x.1 == *d && x.0 != x.1)).collect();
                if matches.is_empty() {
                    errors.push(format!("{name} job: undefined dependency: {d}"));
                    continue;
                }
                for m in matches {
                    if stage_of(&m.3) > my_stage {
                        errors.push(format!("{name} job: dependency {d} is not defined in current or prior stages"));
                    }
                    resolved.push(m.0.clone());
                }
            }
            if let Some(needs) = &def.spec.needs {
                let missing: Vec<&String> = resolved.iter().filter(|d| !needs.contains(d)).collect();
                if !missing.is_empty() {
                    errors.push(format!(
                        "jobs:{} dependencies the {} should be part of needs",
                        def.spec.base_name,
                        missing.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
            def.spec.dependencies = Some(resolved);
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Composed {
        stages,
        variables: global_vars,
        raw_variables: raw_globals,
        jobs: defs,
        workflow,
        warnings: Vec::new(),
        merged_yaml: String::new(),
        includes: Vec::new(),
    })
}

fn resolve_needs(name: &str, raw: &Value, index: &Index, my_matrix: &[(String, String)]) -> Result<Vec<Need>, String> {
    let items = match raw {
        Value::Sequence(items) => items.clone(),
        Value::Mapping(_) | Value::String(_) => vec![raw.clone()],
        _ => return Err(format!("jobs:{name} needs config can only be a hash or an array")),
    };
    if items.len() > 50 {
        return Err(format!("{name} job: one job can only need 50 others, but you have listed {} jobs", items.len()));
    }
    let mut out = Vec::new();
    for item in items {
        let (job, artifacts, optional, matrix) = match &item {
            Value::String(s) => (s.clone(), true, false, None),
            Value::Mapping(m) => {
                if m.contains_key("pipeline") || m.contains_key("project") {
                    // Cross-pipeline artifacts: nothing to wait for in this pipeline.
                    continue;
                }
                let bad = unknown_keys(m, &["job", "artifacts", "optional", "parallel"]);
                if !bad.is_empty() {
                    return Err(format!("jobs:{name}:needs:need config contains unknown keys: {}", bad.join(", ")));
                }
                let Some(job) = m.get("job").and_then(Value::as_str) else {
                    return Err(format!("jobs:{name}:needs:need job should be a string"));
                };
                let matrix = match m.get("parallel") {
                    Some(Value::Mapping(p)) => Some(p.get("matrix").cloned().unwrap_or(Value::Null)),
                    _ => None,
                };
                (
                    job.to_owned(),
                    m.get("artifacts").and_then(Value::as_bool).unwrap_or(true),
                    m.get("optional").and_then(Value::as_bool).unwrap_or(false),
                    matrix,
                )
            }
            _ => return Err(format!("jobs:{name}:needs:need has an unsupported type")),
        };
        match matrix {
            Some(matrix) => {
                let combos = matrix_combos(&matrix).map_err(|e| format!("jobs:{name}:needs:need:parallel {e}"))?;
                for combo in combos {
                    // `$[[ matrix.VAR ]]` is the needing job's own matrix value.
                    let combo: Vec<(String, String)> = combo
                        .into_iter()
                        .map(|(k, v)| {
                            let v = match v.trim().strip_prefix("$[[").and_then(|x| x.strip_suffix("]]")) {
                                Some(inner) => {
                                    let var = inner.trim().trim_start_matches("matrix.").to_owned();
                                    my_matrix.iter().find(|(mk, _)| *mk == var).map(|(_, mv)| mv.clone()).unwrap_or(v)
                                }
                                None => v,
                            };
                            (k, v)
                        })
                        .collect();
                    let found = index.iter().find(|x| {
                        x.1 == job
                            && !x.2.is_empty()
                            && combo.iter().all(|(k, v)| x.2.iter().any(|(a, b)| a == k && b == v))
                            && combo.len() == x.2.len()
                    });
                    let values: Vec<&str> = combo.iter().map(|(_, v)| v.as_str()).collect();
                    let full = format!("{job}: [{}]", values.join(", "));
                    match found {
                        Some(x) => out.push(Need { job: x.0.clone(), artifacts, optional }),
                        None if optional => {}
                        None => return Err(format!("{name} job: undefined need: {full}")),
                    }
                }
            }
            None => {
                if index.iter().any(|x| x.0 == job) {
                    out.push(Need { job, artifacts, optional });
                } else {
                    let all: Vec<&Entry> = index.iter().filter(|x| x.1 == job && x.0 != x.1).collect();
                    if all.is_empty() {
                        if optional {
                            continue;
                        }
                        return Err(format!("{name} job: undefined need: {job}"));
                    }
                    for x in all {
                        out.push(Need { job: x.0.clone(), artifacts, optional });
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The combinations of a `parallel:matrix` list: each entry's product, entries in order, keys in
/// their written order.
fn matrix_combos(matrix: &Value) -> Result<Vec<Vec<(String, String)>>, String> {
    let Value::Sequence(entries) = matrix else { return Err("matrix config should be an array of hashes".into()) };
    let mut all = Vec::new();
    for e in entries {
        let Value::Mapping(m) = e else { return Err("matrix config should be an array of hashes".into()) };
        let mut combos: Vec<Vec<(String, String)>> = vec![Vec::new()];
        for (k, v) in m {
            let key = scalar_text(k);
            let values: Vec<String> = match v {
                Value::Sequence(items) => items.iter().map(scalar_text).collect(),
                other => vec![scalar_text(other)],
            };
            combos = combos
                .into_iter()
                .flat_map(|c| {
                    let key = &key;
                    values.iter().map(move |val| {
                        let mut c = c.clone();
                        c.push((key.clone(), val.clone()));
                        c
                    })
                })
                .collect();
        }
        all.extend(combos);
    }
    Ok(all)
}

fn when_of(v: &Value, name: &str, allowed: &[&str], msg: &str) -> Result<When, String> {
    let text = v.as_str().unwrap_or_default();
    if !allowed.contains(&text) {
        return Err(format!("jobs:{name} {msg}"));
    }
    When::parse(text).ok_or_else(|| format!("jobs:{name} {msg}"))
}

pub(super) fn rules(v: &Value, owner: &str, allowed: &[&str], workflow: bool) -> Result<Vec<Rule>, String> {
    let prefix = if workflow { "workflow:rules".to_owned() } else { format!("jobs:{owner}:rules") };
    let Value::Sequence(items) = v else { return Err(format!("{prefix} config should be an array of hashes")) };
    let mut out = Vec::new();
    // Nested arrays of rules (from `!reference`) are flattened, as GitLab does.
    let mut flat = Vec::new();
    fn flatten(v: &Value, out: &mut Vec<Value>) {
        match v {
            Value::Sequence(items) => items.iter().for_each(|i| flatten(i, out)),
            other => out.push(other.clone()),
        }
    }
    items.iter().for_each(|i| flatten(i, &mut flat));
    for item in flat {
        let Value::Mapping(m) = item else { return Err(format!("{prefix}:rule config should be a hash")) };
        let bad = unknown_keys(&m, allowed);
        if !bad.is_empty() {
            return Err(format!("{prefix}:rule config contains unknown keys: {}", bad.join(", ")));
        }
        let mut rule = Rule::default();
        if let Some(c) = m.get("if") {
            let c = c.as_str().ok_or_else(|| format!("{prefix}:rule if should be a string"))?;
            expr::parse(c).map_err(|e| format!("{prefix}:rule if {e}"))?;
            rule.condition = Some(c.to_owned());
        }
        rule.changes = m.get("changes").cloned();
        rule.exists = m.get("exists").cloned();
        if let Some(w) = m.get("when") {
            let okw: &[&str] = if workflow {
                &["always", "never"]
            } else {
                &["on_success", "on_failure", "always", "never", "manual", "delayed"]
            };
            let text = w.as_str().unwrap_or_default();
            if !okw.contains(&text) {
                return Err(format!("{prefix}:rule when unknown value: {text}"));
            }
            rule.when = When::parse(text);
        }
        rule.allow_failure = match m.get("allow_failure") {
            None => None,
            Some(Value::Bool(b)) => Some(*b),
            Some(_) => return Err(format!("{prefix}:rule allow_failure should be a boolean value")),
        };
        if let Some(vars) = m.get("variables") {
            rule.variables = variables(vars, &format!("{prefix}:rule:variables"), false)?.0;
        }
        if let Some(si) = m.get("start_in") {
            rule.start_in = Some(
                parse_duration(&scalar_text(si))
                    .ok_or_else(|| format!("{prefix}:rule start in should be a duration"))?,
            );
        }
        rule.interruptible = m.get("interruptible").and_then(Value::as_bool);
        rule.raw_needs = m.get("needs").cloned();
        out.push(rule);
    }
    Ok(out)
}

fn policy(v: &Value, name: &str, which: &str) -> Result<Policy, String> {
    match v {
        Value::Sequence(_) => {
            let refs =
                string_list(v).ok_or_else(|| format!("jobs:{name}:{which} config should be an array of strings"))?;
            Ok(Policy { refs: Some(refs), ..Policy::default() })
        }
        Value::String(s) => Ok(Policy { refs: Some(vec![s.clone()]), ..Policy::default() }),
        Value::Mapping(m) => {
            let bad = unknown_keys(m, &["refs", "variables", "changes", "kubernetes"]);
            if !bad.is_empty() {
                return Err(format!("jobs:{name}:{which} config contains unknown keys: {}", bad.join(", ")));
            }
            let refs = match m.get("refs") {
                Some(r) => Some(
                    string_or_list(r)
                        .ok_or_else(|| format!("jobs:{name}:{which} refs should be an array of strings"))?,
                ),
                None => None,
            };
            let variables = match m.get("variables") {
                Some(r) => {
                    let list = string_or_list(r)
                        .ok_or_else(|| format!("jobs:{name}:{which} variables should be an array of strings"))?;
                    for e in &list {
                        expr::parse(e)
                            .map_err(|_| format!("jobs:{name}:{which} variables invalid expression syntax"))?;
                    }
                    Some(list)
                }
                None => None,
            };
            Ok(Policy { refs, variables, changes: m.get("changes").cloned() })
        }
        _ => Err(format!("jobs:{name}:{which} config should be an array of strings or a hash")),
    }
}

type JobParts = (JobDef, Vec<(JobSpec, Vec<(String, String)>)>, Option<Value>, Option<Vec<String>>);

/// One job (or bridge): its checks, its definition, its `parallel` instances, and its raw
/// `needs` and `dependencies`.
fn job(name: &str, map: &Mapping, stages: &[String], defaults: &Defaults) -> Result<JobParts, Errors> {
    let bridge = map.contains_key("trigger");
    if !bridge && !map.contains_key("script") {
        if map.contains_key("run") {
            return Err(vec![format!("jobs:{name} run is not supported by gitlab-sim (CI/CD Steps)")]);
        }
        return Err(vec![format!("jobs:{name} config should implement the script:, run:, or trigger: keyword")]);
    }
    let allowed: &[&str] = if bridge { &BRIDGE_KEYS } else { &JOB_KEYS };
    let bad = unknown_keys(map, allowed);
    if !bad.is_empty() {
        return Err(vec![format!("jobs:{name} config contains unknown keys: {}", bad.join(", "))]);
    }
    let mut errors = Vec::new();
    let get = |k: &str| map.get(k);
    // `inherit:default` decides which `default:` keys reach the job.
    let (inherit_default, inherit_vars) = match get("inherit") {
        Some(Value::Mapping(i)) => {
            let d = match i.get("default") {
                None | Some(Value::Bool(true)) => Inherit::All,
                Some(Value::Bool(false)) => Inherit::None,
                Some(v) => Inherit::Only(string_list(v).unwrap_or_default()),
            };
            let v = match i.get("variables") {
                None | Some(Value::Bool(true)) => Inherit::All,
                Some(Value::Bool(false)) => Inherit::None,
                Some(v) => Inherit::Only(string_list(v).unwrap_or_default()),
            };
            (d, v)
        }
        _ => (Inherit::All, Inherit::All),
    };
    let inherited = |k: &str| -> Option<&Value> {
        map.get(k).or_else(|| if inherit_default.allows(k) && !bridge { defaults.get(k) } else { None })
    };
    if map.contains_key("rules") {
        for k in ["only", "except", "start_in"] {
            if map.contains_key(k) {
                errors.push(format!("jobs:{name} config key may not be used with `rules`: {k}"));
            }
        }
    }
    let stage = match get("stage").or_else(|| get("type")) {
        None => "test".to_owned(),
        Some(v) => match v.as_str() {
            Some(s) => s.to_owned(),
            None => {
                errors.push(format!("jobs:{name} stage should be a string"));
                "test".into()
            }
        },
    };
    if !stages.contains(&stage) {
        errors.push(format!(
            "jobs:{name} chosen stage {stage} does not exist; available stages are {}",
            stages.join(", ")
        ));
    }
    let script = if bridge {
        Vec::new()
    } else {
        match commands(&map["script"], 0) {
            Some(s) if s.is_empty() => {
                errors.push(format!("jobs:{name} script can't be blank"));
                s
            }
            Some(s) => s,
            None => {
                errors.push(format!(
                    "jobs:{name} script config should be a string or a nested array of strings up to 10 levels deep"
                ));
                Vec::new()
            }
        }
    };
    let mut spec = JobSpec::new(name, &stage, script);
    spec.inherit_variables = inherit_vars;
    for (key, field) in [("before_script", 0), ("after_script", 1)] {
        if let Some(v) = inherited(key) {
            match commands(v, 0) {
                Some(lines) if field == 0 => spec.before_script = lines,
                Some(lines) => spec.after_script = lines,
                None => errors.push(format!(
                    "jobs:{name} {key} config should be a string or a nested array of strings up to 10 levels deep"
                )),
            }
        }
    }
    let mut raw_variables = Vec::new();
    if let Some(v) = get("variables") {
        match variables(v, &format!("jobs:{name} variables"), false) {
            Ok((vars, raw)) => {
                spec.variables = vars;
                raw_variables = raw;
            }
            Err(e) => errors.push(e),
        }
    }
    let when_given = get("when").is_some();
    if let Some(w) = get("when") {
        let (allowed, msg): (&[&str], &str) = if bridge {
            (
                &["on_success", "on_failure", "always", "manual"],
                "when should be on_success, on_failure, always or manual",
            )
        } else {
            (
                &["on_success", "on_failure", "always", "manual", "delayed"],
                "when should be one of: on_success, on_failure, always, manual, delayed",
            )
        };
        match when_of(w, name, allowed, msg) {
            Ok(w) => spec.when = w,
            Err(e) => errors.push(e),
        }
    }
    match (spec.when, get("start_in")) {
        (When::Delayed, Some(v)) => match parse_duration(&scalar_text(v)) {
            Some(d) if d <= std::time::Duration::from_secs(604_800) => spec.start_in = Some(d),
            Some(_) => errors.push(format!("jobs:{name} start in should not exceed the limit")),
            None => errors.push(format!("jobs:{name} start in should be a duration")),
        },
        (When::Delayed, None) if !map.contains_key("rules") => {
            errors.push(format!("jobs:{name} start in should be a duration"));
        }
        (_, Some(_)) if !map.contains_key("rules") => errors.push(format!("jobs:{name} start in must be blank")),
        _ => {}
    }
    let allow_failure_given = get("allow_failure").is_some();
    spec.allow_failure = spec.when == When::Manual;
    match get("allow_failure") {
        None => {}
        Some(Value::Bool(b)) => spec.allow_failure = *b,
        Some(Value::Mapping(m)) if !bridge => {
            let bad = unknown_keys(m, &["exit_codes"]);
            let codes = match m.get("exit_codes") {
                Some(Value::Number(n)) => n.as_i64().map(|c| vec![c as i32]),
                Some(Value::Sequence(items)) => items.iter().map(|i| i.as_i64().map(|c| c as i32)).collect(),
                _ => None,
            };
            match codes {
                Some(c) if bad.is_empty() => {
                    // GitLab: a job with `exit_codes` is not allowed to fail otherwise.
                    spec.allow_failure = false;
                    spec.allow_failure_exit_codes = c;
                }
                _ => errors
                    .push(format!("jobs:{name}:allow_failure exit_codes should be an array of integers or an integer")),
            }
        }
        Some(_) => errors.push(format!("jobs:{name} allow_failure should be a hash or a boolean value")),
    }
    let raw_needs = get("needs").cloned();
    let deps = match get("dependencies") {
        None => None,
        Some(v) => match string_list(v) {
            Some(d) => Some(d),
            None => {
                errors.push(format!("jobs:{name} dependencies should be an array of strings"));
                None
            }
        },
    };
    if let Some(v) = inherited("artifacts") {
        match artifacts(v, name) {
            Ok((paths, a)) => {
                spec.artifact_paths = paths;
                spec.artifacts = a;
            }
            Err(e) => errors.push(e),
        }
    }
    if let Some(v) = inherited("retry") {
        match retry(v, name) {
            Ok(r) => spec.retry = r,
            Err(e) => errors.push(e),
        }
    }
    if let Some(v) = inherited("timeout") {
        match parse_duration(&scalar_text(v)) {
            Some(d) => spec.timeout = Some(d),
            None => errors.push(format!("jobs:{name} timeout should be a duration")),
        }
    }
    match inherited("interruptible") {
        None => {}
        Some(Value::Bool(b)) => spec.interruptible = *b,
        Some(_) => errors.push(format!("jobs:{name} interruptible config should be a boolean value")),
    }
    match get("resource_group") {
        None => {}
        Some(Value::String(g)) => spec.resource_group = Some(g.clone()),
        Some(_) => errors.push(format!("jobs:{name} resource group should be a string")),
    }
    match get("environment") {
        None => {}
        Some(Value::String(e)) => spec.environment = Some(e.clone()),
        Some(Value::Mapping(m)) => spec.environment = m.get("name").map(scalar_text),
        Some(_) => errors.push(format!("jobs:{name} environment config should be a hash or a string")),
    }
    if let Some(c) = get("coverage") {
        let text = scalar_text(c);
        if expr::compile_pattern(&text).is_err() {
            errors.push(format!("jobs:{name}:coverage config must be a regular expression"));
        } else {
            spec.coverage = Some(text);
        }
    }
    if let Some(t) = inherited("tags") {
        match string_list(t) {
            Some(tags) => spec.tags = tags,
            None => errors.push(format!("jobs:{name} tags should be an array of strings")),
        }
    }
    for key in ["image", "services", "cache"] {
        if let Some(v) = inherited(key) {
            let shown = match v {
                Value::Mapping(m) if key == "image" => m.get("name").map(scalar_text).unwrap_or_default(),
                Value::Sequence(items) => items
                    .iter()
                    .map(|i| match i {
                        Value::Mapping(m) => {
                            m.get("name").or_else(|| m.get("key")).map(scalar_text).unwrap_or_default()
                        }
                        other => scalar_text(other),
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                Value::Mapping(m) => m.get("key").map(scalar_text).unwrap_or_default(),
                other => scalar_text(other),
            };
            spec.notes.push(match key {
                "image" => format!("the sim's shell executor runs without containers: image {shown} not used"),
                "services" => format!("the sim's shell executor runs without containers: services {shown} not started"),
                _ => format!("the sim does not keep caches between jobs: cache {shown} not restored or saved"),
            });
        }
    }
    if bridge {
        match trigger(&map["trigger"], name) {
            Ok(t) => spec.trigger = Some(t),
            Err(e) => errors.push(e),
        }
    }
    let rules_v = match get("rules") {
        Some(r) => match rules(r, name, &RULE_KEYS, false) {
            Ok(r) => Some(r),
            Err(e) => {
                errors.push(e);
                None
            }
        },
        None => None,
    };
    let only = get("only").map(|v| policy(v, name, "only")).transpose().unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let except = get("except").map(|v| policy(v, name, "except")).transpose().unwrap_or_else(|e| {
        errors.push(e);
        None
    });
    let instances = match get("parallel") {
        None => vec![(spec.clone(), Vec::new())],
        Some(p) => match parallel(p, name) {
            Ok(list) => {
                let total = list.len() as u32;
                list.into_iter()
                    .enumerate()
                    .map(|(i, (inst_name, matrix))| {
                        let mut inst = spec.clone();
                        inst.name = inst_name;
                        inst.node = Some((i as u32 + 1, total));
                        for (k, v) in &matrix {
                            inst.variables.insert(k.clone(), v.clone());
                        }
                        (inst, matrix)
                    })
                    .collect()
            }
            Err(e) => {
                errors.push(e);
                Vec::new()
            }
        },
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    let def = JobDef { spec, rules: rules_v, only, except, allow_failure_given, when_given, raw_variables };
    Ok((def, instances, raw_needs, deps))
}

/// `parallel: N` (`job 1/N`) or `parallel: matrix` (`job: [a, b]`).
fn parallel(v: &Value, name: &str) -> Result<Vec<(String, Matrix)>, String> {
    match v {
        Value::Number(n) => {
            let n = n.as_u64().unwrap_or(0);
            if !(1..=200).contains(&n) {
                return Err(format!("jobs:{name}:parallel config must be less than or equal to 200"));
            }
            Ok((1..=n).map(|i| (format!("{name} {i}/{n}"), Vec::new())).collect())
        }
        Value::Mapping(m) => {
            let bad = unknown_keys(m, &["matrix"]);
            if !bad.is_empty() {
                return Err(format!("jobs:{name}:parallel config contains unknown keys: {}", bad.join(", ")));
            }
            let combos = matrix_combos(m.get("matrix").unwrap_or(&Value::Null))
                .map_err(|e| format!("jobs:{name}:parallel:matrix {e}"))?;
            if combos.len() > 200 {
                return Err(format!("jobs:{name}:parallel:matrix config generates too many jobs (maximum is 200)"));
            }
            Ok(combos
                .into_iter()
                .map(|c| {
                    let values: Vec<&str> = c.iter().map(|(_, v)| v.as_str()).collect();
                    (format!("{name}: [{}]", values.join(", ")), c)
                })
                .collect())
        }
        _ => Err(format!("jobs:{name}:parallel should be an integer or a hash")),
    }
}

fn artifacts(v: &Value, name: &str) -> Result<(Vec<String>, ArtifactsSpec), String> {
    let Value::Mapping(a) = v else { return Err(format!("jobs:{name}:artifacts config should be a hash")) };
    let bad = unknown_keys(
        a,
        &["paths", "exclude", "expose_as", "name", "untracked", "when", "expire_in", "reports", "public", "access"],
    );
    if !bad.is_empty() {
        return Err(format!("jobs:{name}:artifacts config contains unknown keys: {}", bad.join(", ")));
    }
    let list = |k: &str| -> Result<Vec<String>, String> {
        match a.get(k) {
            None => Ok(Vec::new()),
            Some(v) => string_list(v).ok_or_else(|| format!("jobs:{name}:artifacts {k} should be an array of strings")),
        }
    };
    let paths = list("paths")?;
    let mut spec = ArtifactsSpec { exclude: list("exclude")?, when: "on_success".into(), ..ArtifactsSpec::default() };
    spec.name = a.get("name").map(scalar_text);
    spec.expire_in = a.get("expire_in").map(scalar_text);
    spec.untracked = a.get("untracked").and_then(Value::as_bool).unwrap_or(false);
    if let Some(w) = a.get("when") {
        let w = scalar_text(w);
        if !matches!(w.as_str(), "on_success" | "on_failure" | "always") {
            return Err(format!("jobs:{name}:artifacts when should be on_success, on_failure or always"));
        }
        spec.when = w;
    }
    match a.get("reports") {
        None => {}
        Some(Value::Mapping(r)) => {
            for (k, v) in r {
                let files = match v {
                    Value::String(s) => vec![s.clone()],
                    Value::Sequence(_) => string_list(v).unwrap_or_default(),
                    // `coverage_report: {coverage_format, path}`
                    Value::Mapping(m) => m.get("path").map(scalar_text).into_iter().collect(),
                    _ => Vec::new(),
                };
                spec.reports.insert(scalar_text(k), files);
            }
        }
        Some(_) => return Err(format!("jobs:{name}:artifacts:reports config should be a hash")),
    }
    Ok((paths, spec))
}

const RETRY_WHEN: [&str; 14] = [
    "always",
    "unknown_failure",
    "script_failure",
    "api_failure",
    "stuck_or_timeout_failure",
    "runner_system_failure",
    "runner_unsupported",
    "stale_schedule",
    "job_execution_timeout",
    "archived_failure",
    "unmet_prerequisites",
    "scheduler_failure",
    "data_integrity_failure",
    "scheduler_failure",
];

fn retry(v: &Value, name: &str) -> Result<RetrySpec, String> {
    let max_err = || format!("jobs:{name}:retry max config must be less than or equal to 2");
    match v {
        Value::Number(n) => {
            let max = n.as_u64().filter(|m| *m <= 2).ok_or_else(max_err)? as u32;
            Ok(RetrySpec { max, ..RetrySpec::default() })
        }
        Value::Mapping(m) => {
            let bad = unknown_keys(m, &["max", "when", "exit_codes"]);
            if !bad.is_empty() {
                return Err(format!("jobs:{name}:retry config contains unknown keys: {}", bad.join(", ")));
            }
            let max = match m.get("max") {
                None => 0,
                Some(v) => v.as_u64().filter(|m| *m <= 2).ok_or_else(max_err)? as u32,
            };
            let when = match m.get("when") {
                None => Vec::new(),
                Some(v) => string_or_list(v)
                    .ok_or_else(|| format!("jobs:{name}:retry when should be an array of strings or a string"))?,
            };
            if let Some(bad) = when.iter().find(|w| !RETRY_WHEN.contains(&w.as_str())) {
                return Err(format!("jobs:{name}:retry when contains unknown values: {bad}"));
            }
            let exit_codes = match m.get("exit_codes") {
                None => Vec::new(),
                Some(Value::Number(n)) => vec![n.as_i64().unwrap_or(0) as i32],
                Some(Value::Sequence(items)) => items.iter().filter_map(Value::as_i64).map(|c| c as i32).collect(),
                Some(_) => {
                    return Err(format!("jobs:{name}:retry exit_codes should be an array of integers or an integer"));
                }
            };
            Ok(RetrySpec { max, when, exit_codes })
        }
        _ => Err(format!("jobs:{name} retry config has to be either an integer or a hash")),
    }
}

fn trigger(v: &Value, name: &str) -> Result<TriggerSpec, String> {
    let mut t = TriggerSpec {
        include: Vec::new(),
        project: None,
        branch: None,
        depend: false,
        forward_yaml_variables: true,
        forward_pipeline_variables: false,
    };
    match v {
        Value::String(p) => t.project = Some(p.clone()),
        Value::Mapping(m) => {
            let bad = unknown_keys(m, &["include", "project", "branch", "strategy", "forward", "inputs"]);
            if !bad.is_empty() {
                return Err(format!("jobs:{name}:trigger config contains unknown keys: {}", bad.join(", ")));
            }
            if let Some(inc) = m.get("include") {
                t.include = match inc {
                    Value::Sequence(items) => items.clone(),
                    other => vec![other.clone()],
                };
            }
            t.project = m.get("project").map(scalar_text);
            t.branch = m.get("branch").map(scalar_text);
            if t.project.is_none() && t.include.is_empty() {
                return Err(format!("jobs:{name} trigger config should include either project or include"));
            }
            match m.get("strategy").map(scalar_text).as_deref() {
                None => {}
                Some("depend") => t.depend = true,
                Some(_) => return Err(format!("jobs:{name}:trigger strategy should be depend")),
            }
            if let Some(Value::Mapping(f)) = m.get("forward") {
                if let Some(b) = f.get("yaml_variables").and_then(Value::as_bool) {
                    t.forward_yaml_variables = b;
                }
                if let Some(b) = f.get("pipeline_variables").and_then(Value::as_bool) {
                    t.forward_pipeline_variables = b;
                }
            }
        }
        _ => return Err(format!("jobs:{name} trigger config should be a string or a hash")),
    }
    Ok(t)
}
