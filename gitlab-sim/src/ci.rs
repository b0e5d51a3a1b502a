//! The `.gitlab-ci.yml` subset the sim runs: `stages`, top-level `variables`, and jobs with
//! `stage`, `script`, `before_script`, `variables`, `artifacts:paths`, `when`, `allow_failure`,
//! `needs`. `image` and `tags` are accepted and ignored, as GitLab's shell executor does. Anything
//! else is an error at pipeline creation, worded like GitLab's YAML errors.

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

/// When a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// After everything before it succeeded (default).
    OnSuccess,
    /// Only when something before it failed.
    OnFailure,
    /// Whatever happened before.
    Always,
    /// When someone plays it.
    Manual,
}

impl When {
    /// GitLab's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::OnSuccess => "on_success",
            Self::OnFailure => "on_failure",
            Self::Always => "always",
            Self::Manual => "manual",
        }
    }
}

/// One job's definition.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Job name.
    pub name: String,
    /// Stage name.
    pub stage: String,
    /// `before_script` lines.
    pub before_script: Vec<String>,
    /// `script` lines.
    pub script: Vec<String>,
    /// Job variables (over the top-level ones).
    pub variables: BTreeMap<String, String>,
    /// `artifacts:paths`.
    pub artifact_paths: Vec<String>,
    /// `when`.
    pub when: When,
    /// `allow_failure` (defaults to true for manual jobs, as in GitLab).
    pub allow_failure: bool,
    /// `needs`: run as soon as these succeed instead of waiting for the previous stages.
    pub needs: Option<Vec<String>>,
}

/// A parsed configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct CiConfig {
    /// Stage names in order.
    pub stages: Vec<String>,
    /// Top-level variables.
    pub variables: BTreeMap<String, String>,
    /// Jobs in stage order, then file order.
    pub jobs: Vec<JobSpec>,
}

const JOB_KEYS: [&str; 10] =
    ["stage", "script", "before_script", "variables", "artifacts", "when", "allow_failure", "needs", "image", "tags"];

/// Parses and checks a configuration. The error reads like GitLab's (`jobs:build config contains
/// unknown keys: cache`).
pub fn parse(text: &str) -> Result<CiConfig, String> {
    let doc: Value = serde_yaml_ng::from_str(text).map_err(|e| format!("Invalid configuration format: {e}"))?;
    let Value::Mapping(top) = doc else {
        return Err("Invalid configuration format".into());
    };
    let mut stages = vec![".pre".to_owned(), "build".into(), "test".into(), "deploy".into(), ".post".into()];
    let mut variables = BTreeMap::new();
    let mut raw_jobs = Vec::new();
    for (key, value) in &top {
        let key = key.as_str().ok_or("Invalid configuration format: keys must be strings")?;
        match key {
            "stages" => {
                let list = string_list(value).ok_or("stages config should be an array of strings")?;
                stages = std::iter::once(".pre".to_owned()).chain(list).chain([".post".to_owned()]).collect();
            }
            "variables" => variables = variable_map(value, "variables")?,
            "image" => {}
            "default" | "workflow" | "include" | "cache" | "services" | "before_script" | "after_script" => {
                return Err(format!("{key} is not supported by gitlab-sim"));
            }
            hidden if hidden.starts_with('.') => {}
            name => raw_jobs.push((name.to_owned(), value)),
        }
    }
    let mut jobs = Vec::new();
    for (name, value) in raw_jobs {
        jobs.push(job(&name, value, &stages)?);
    }
    if jobs.is_empty() {
        return Err("jobs config should contain at least one visible job".into());
    }
    let names: Vec<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    for job in &jobs {
        for need in job.needs.iter().flatten() {
            if !names.contains(&need.as_str()) {
                return Err(format!("jobs:{} needs: '{need}' job does not exist", job.name));
            }
            let my_stage = stages.iter().position(|s| *s == job.stage);
            let their = jobs.iter().find(|j| j.name == *need).and_then(|j| stages.iter().position(|s| *s == j.stage));
            if their > my_stage {
                return Err(format!("jobs:{} needs: '{need}' is in a later stage", job.name));
            }
        }
    }
    jobs.sort_by_key(|j| stages.iter().position(|s| *s == j.stage).unwrap_or(usize::MAX));
    // Only stages that have jobs matter for the pipeline's `stages`.
    stages.retain(|s| jobs.iter().any(|j| j.stage == *s));
    Ok(CiConfig { stages, variables, jobs })
}

fn job(name: &str, value: &Value, stages: &[String]) -> Result<JobSpec, String> {
    let Value::Mapping(map) = value else {
        return Err(format!("jobs:{name} config should be a hash"));
    };
    let unknown: Vec<&str> = map.keys().filter_map(Value::as_str).filter(|k| !JOB_KEYS.contains(k)).collect();
    if !unknown.is_empty() {
        return Err(format!("jobs:{name} config contains unknown keys: {}", unknown.join(", ")));
    }
    let get = |k: &str| map.get(Value::String(k.to_owned()));
    let stage = match get("stage") {
        None => "test".to_owned(),
        Some(v) => v.as_str().ok_or(format!("jobs:{name} stage should be a string"))?.to_owned(),
    };
    if !stages.contains(&stage) {
        return Err(format!(
            "jobs:{name} chosen stage {stage} does not exist; available stages are {}",
            stages.join(", ")
        ));
    }
    let script = match get("script") {
        Some(v) => {
            script_lines(v).ok_or(format!("jobs:{name} script should be a string or a nested array of strings"))?
        }
        None => return Err(format!("jobs:{name} config should implement the script: keyword")),
    };
    if script.is_empty() {
        return Err(format!("jobs:{name} script can't be blank"));
    }
    let before_script = match get("before_script") {
        Some(v) => {
            script_lines(v).ok_or(format!("jobs:{name} before_script should be a string or an array of strings"))?
        }
        None => Vec::new(),
    };
    let variables = match get("variables") {
        Some(v) => variable_map(v, &format!("jobs:{name} variables"))?,
        None => BTreeMap::new(),
    };
    let artifact_paths = match get("artifacts") {
        None => Vec::new(),
        Some(Value::Mapping(a)) => {
            let bad: Vec<&str> = a.keys().filter_map(Value::as_str).filter(|k| *k != "paths").collect();
            if !bad.is_empty() {
                return Err(format!("jobs:{name}:artifacts config contains unknown keys: {}", bad.join(", ")));
            }
            match a.get(Value::String("paths".into())) {
                Some(p) => {
                    string_list(p).ok_or(format!("jobs:{name}:artifacts paths should be an array of strings"))?
                }
                None => Vec::new(),
            }
        }
        Some(_) => return Err(format!("jobs:{name}:artifacts config should be a hash")),
    };
    let when = match get("when").map(|v| v.as_str()) {
        None => When::OnSuccess,
        Some(Some("on_success")) => When::OnSuccess,
        Some(Some("on_failure")) => When::OnFailure,
        Some(Some("always")) => When::Always,
        Some(Some("manual")) => When::Manual,
        Some(other) => {
            return Err(format!(
                "jobs:{name} when should be one of: on_success, on_failure, always, manual (got {})",
                other.unwrap_or("a non-string")
            ));
        }
    };
    let allow_failure = match get("allow_failure") {
        None => when == When::Manual,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(format!("jobs:{name} allow_failure should be a boolean value")),
    };
    let needs = match get("needs") {
        None => None,
        Some(Value::Sequence(items)) => {
            let mut list = Vec::new();
            for item in items {
                match item {
                    Value::String(s) => list.push(s.clone()),
                    Value::Mapping(m) => match m.get(Value::String("job".into())).and_then(Value::as_str) {
                        Some(s) => list.push(s.to_owned()),
                        None => return Err(format!("jobs:{name} needs config should name a job")),
                    },
                    _ => return Err(format!("jobs:{name} needs config has an invalid entry")),
                }
            }
            Some(list)
        }
        Some(_) => return Err(format!("jobs:{name} needs config should be an array")),
    };
    Ok(JobSpec {
        name: name.to_owned(),
        stage,
        before_script,
        script,
        variables,
        artifact_paths,
        when,
        allow_failure,
        needs,
    })
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::Sequence(items) => items.iter().map(|i| i.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
}

/// A script is a string or a list of strings and (one level of) nested lists.
fn script_lines(v: &Value) -> Option<Vec<String>> {
    match v {
        Value::String(s) => Some(vec![s.clone()]),
        Value::Sequence(items) => {
            let mut lines = Vec::new();
            for item in items {
                match item {
                    Value::String(s) => lines.push(s.clone()),
                    Value::Sequence(inner) => lines.extend(string_list(&Value::Sequence(inner.clone()))?),
                    _ => return None,
                }
            }
            Some(lines)
        }
        _ => None,
    }
}

fn variable_map(v: &Value, what: &str) -> Result<BTreeMap<String, String>, String> {
    let Value::Mapping(map) = v else {
        return Err(format!("{what} config should be a hash of key value pairs"));
    };
    let mut out = BTreeMap::new();
    for (k, v) in map {
        let key = k.as_str().ok_or(format!("{what} config should use string keys"))?;
        let value = match v {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            Value::Mapping(m) => match m.get(Value::String("value".into())) {
                Some(Value::String(s)) => s.clone(),
                _ => return Err(format!("{what}:{key} config should have a value")),
            },
            _ => return Err(format!("{what}:{key} config should be a string")),
        };
        out.insert(key.to_owned(), value);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIRMWARE: &str = r#"
stages: [build, test]
variables:
  OPT: "-O2"
.template: {script: [echo hidden]}
build:
  stage: build
  image: gcc:13
  before_script: [echo prep]
  script:
    - make TARGET=$TARGET
    - [echo a, echo b]
  artifacts:
    paths: [out/]
test:
  stage: test
  script: make test
  needs: [build]
flash:
  stage: test
  script: echo flash
  when: manual
"#;

    #[test]
    fn reads_the_subset() {
        let cfg = parse(FIRMWARE).unwrap();
        assert_eq!(cfg.stages, ["build", "test"]);
        assert_eq!(cfg.variables["OPT"], "-O2");
        let names: Vec<_> = cfg.jobs.iter().map(|j| j.name.as_str()).collect();
        assert_eq!(names, ["build", "test", "flash"]);
        let build = &cfg.jobs[0];
        assert_eq!(build.script, ["make TARGET=$TARGET", "echo a", "echo b"]);
        assert_eq!(build.artifact_paths, ["out/"]);
        assert_eq!(cfg.jobs[1].needs.as_deref(), Some(&["build".to_owned()][..]));
        assert!(cfg.jobs[2].allow_failure && cfg.jobs[2].when == When::Manual);
    }

    #[test]
    fn errors_read_like_gitlabs() {
        let e = parse("build:\n  script: x\n  cache: {}\n").unwrap_err();
        assert_eq!(e, "jobs:build config contains unknown keys: cache");
        let e = parse("build:\n  stage: nope\n  script: x\n").unwrap_err();
        assert!(e.contains("chosen stage nope does not exist"), "{e}");
        let e = parse("build:\n  stage: build\n").unwrap_err();
        assert!(e.contains("script: keyword"), "{e}");
        let e = parse("a:\n  script: x\n  needs: [b]\n").unwrap_err();
        assert!(e.contains("'b' job does not exist"), "{e}");
        assert!(parse("include: x.yml\n").unwrap_err().contains("include"));
        assert!(parse(": : :").is_err());
    }
}
