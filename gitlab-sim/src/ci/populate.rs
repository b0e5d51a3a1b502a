//! One pipeline's jobs from a composed configuration: `workflow:rules`, then each job's `rules`
//! or `only`/`except` for the pipeline's source, ref, variables and files; then GitLab's
//! refusals (an empty pipeline, a need on a job the rules removed).

use std::collections::BTreeMap;

use serde_yaml_ng::Value;

use super::expr::{self, Vars};
use super::jobs::{Policy, Rule};
use super::load::{Files, scalar_text};
use super::{CiConfig, Composed, When};

/// GitLab's answer when rules leave no job (FACTS §3.8).
pub const EMPTY_PIPELINE: &str =
    "The resulting pipeline would have been empty. Review the rules configuration for the relevant jobs.";
/// GitLab's answer when `workflow:rules` refuse the pipeline (FACTS §3.8).
pub const WORKFLOW_REFUSED: &str =
    "The pipeline did not run. Review the workflow:rules configuration for the pipeline.";

/// The pipeline a configuration is read for.
#[derive(Debug, Clone)]
pub struct Context {
    /// `CI_PIPELINE_SOURCE`: `api`, `push`, `web`, `trigger`, `schedule`, `parent_pipeline`, ...
    pub source: String,
    /// Branch or tag.
    pub git_ref: String,
    /// Whether `git_ref` is a tag.
    pub tag: bool,
    /// Predefined variables known before the pipeline exists (lowest precedence).
    pub predefined: Vars,
    /// Variables given to the pipeline (API `variables`, a trigger's, a parent's forwarded ones):
    /// highest precedence.
    pub pipeline_variables: Vars,
    /// Pipeline `inputs` for the main file's `spec:inputs`.
    pub inputs: serde_json::Map<String, serde_json::Value>,
}

impl Context {
    /// A context with the predefined variables that follow from source and ref alone.
    pub fn new(source: &str, git_ref: &str, tag: bool) -> Self {
        let mut predefined = Vars::new();
        for (k, v) in [("CI", "true"), ("GITLAB_CI", "true"), ("CI_SERVER", "yes")] {
            predefined.insert(k.into(), v.into());
        }
        predefined.insert("CI_PIPELINE_SOURCE".into(), source.into());
        predefined.insert("CI_COMMIT_REF_NAME".into(), git_ref.into());
        predefined.insert("CI_COMMIT_REF_SLUG".into(), ref_slug(git_ref));
        predefined.insert(if tag { "CI_COMMIT_TAG" } else { "CI_COMMIT_BRANCH" }.into(), git_ref.into());
        predefined.entry("CI_DEFAULT_BRANCH".into()).or_insert_with(|| "main".into());
        Self {
            source: source.into(),
            git_ref: git_ref.into(),
            tag,
            predefined,
            pipeline_variables: Vars::new(),
            inputs: serde_json::Map::new(),
        }
    }
}

/// `CI_COMMIT_REF_SLUG`: lowercased, anything but `0-9a-z` replaced by `-`, 63 bytes, no `-` at
/// either end.
pub fn ref_slug(name: &str) -> String {
    let s: String =
        name.to_lowercase().chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '-' }).take(63).collect();
    s.trim_matches('-').to_owned()
}

fn glob_match(pattern: &str, path: &str) -> bool {
    // `File.fnmatch?(pattern, path, FNM_PATHNAME | FNM_DOTMATCH | FNM_EXTGLOB)`: `*` stays in one
    // directory, `**/` crosses them, `{a,b}` alternates.
    let opts = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: false,
    };
    braces(pattern).iter().any(|p| {
        let p = p.trim_start_matches("./");
        glob::Pattern::new(p).is_ok_and(|g| g.matches_with(path, opts)) || (p.ends_with('/') && path.starts_with(p))
    })
}

fn braces(pattern: &str) -> Vec<String> {
    let Some(open) = pattern.find('{') else { return vec![pattern.to_owned()] };
    let Some(close) = pattern[open..].find('}').map(|c| c + open) else { return vec![pattern.to_owned()] };
    let (head, body, tail) = (&pattern[..open], &pattern[open + 1..close], &pattern[close + 1..]);
    body.split(',').flat_map(|alt| braces(&format!("{head}{alt}{tail}"))).collect()
}

fn patterns(v: &Value, vars: &Vars) -> (Vec<String>, Option<String>) {
    let (pats, compare_to): (Vec<String>, Option<String>) = match v {
        Value::Mapping(m) => (
            m.get("paths")
                .and_then(|p| p.as_sequence())
                .map(|s| s.iter().map(scalar_text).collect())
                .unwrap_or_default(),
            m.get("compare_to").map(scalar_text),
        ),
        Value::Sequence(items) => (items.iter().map(scalar_text).collect(), None),
        other => (vec![scalar_text(other)], None),
    };
    (pats.iter().map(|x| expr::expand(x, vars)).collect(), compare_to.map(|c| expr::expand(&c, vars)))
}

/// `rules:exists`: a file at the commit matches one of the globs.
pub(super) fn exists_match(v: &Value, files: &dyn Files, vars: &Vars) -> bool {
    let (pats, _) = patterns(v, vars);
    let list = files.list();
    pats.iter().any(|p| list.iter().any(|f| glob_match(p, f)))
}

/// `rules:changes`: true when there is nothing to compare with (API, web, schedule, trigger and
/// child pipelines, a new branch), else a changed file matches.
pub(super) fn changes_match(v: &Value, files: &dyn Files, vars: &Vars) -> bool {
    let (pats, compare_to) = patterns(v, vars);
    match files.changed(compare_to.as_deref()) {
        None => true,
        Some(changed) => pats.iter().any(|p| changed.iter().any(|f| glob_match(p, f))),
    }
}

fn rule_matches(rule: &Rule, vars: &Vars, files: &dyn Files) -> bool {
    rule.condition.as_deref().is_none_or(|c| expr::evaluate(c, vars))
        && rule.changes.as_ref().is_none_or(|c| changes_match(c, files, vars))
        && rule.exists.as_ref().is_none_or(|e| exists_match(e, files, vars))
}

/// One `only`/`except` policy's parts, each true or false for this pipeline (`None` when absent).
fn policy_parts(p: &Policy, ctx: &Context, vars: &Vars, files: &dyn Files) -> Vec<bool> {
    let mut parts = Vec::new();
    if let Some(refs) = &p.refs {
        parts.push(refs.iter().any(|r| ref_matches(r, ctx, vars)));
    }
    if let Some(exprs) = &p.variables {
        parts.push(exprs.iter().any(|e| expr::evaluate(e, vars)));
    }
    if let Some(c) = &p.changes {
        parts.push(changes_match(c, files, vars));
    }
    parts
}

fn ref_matches(pattern: &str, ctx: &Context, vars: &Vars) -> bool {
    let (pattern, project) = match pattern.split_once('@') {
        Some((p, proj)) if !pattern.starts_with('/') => (p, Some(proj)),
        _ => (pattern, None),
    };
    if let Some(proj) = project
        && vars.get("CI_PROJECT_PATH").is_some_and(|p| p != proj)
    {
        return false;
    }
    let mr = ctx.source == "merge_request_event";
    match pattern {
        "branches" => !ctx.tag && !mr,
        "tags" => ctx.tag,
        "api" => ctx.source == "api",
        "external" => ctx.source == "external",
        "pipelines" => ctx.source == "pipeline" || ctx.source == "parent_pipeline",
        "pushes" => ctx.source == "push",
        "schedules" => ctx.source == "schedule",
        "triggers" => ctx.source == "trigger",
        "web" => ctx.source == "web",
        "merge_requests" => mr,
        "chat" => ctx.source == "chat",
        "external_pull_requests" => ctx.source == "external_pull_request_event",
        p if p.starts_with('/') && p.len() > 1 => expr::compile_pattern(p).is_ok_and(|re| re.is_match(&ctx.git_ref)),
        exact => exact == ctx.git_ref,
    }
}

/// The variables a pipeline's rules see: predefined, then top-level YAML (expanded), then the
/// pipeline's own.
fn pipeline_vars(composed: &Composed, globals: &BTreeMap<String, String>, ctx: &Context) -> Vars {
    let mut all: Vec<(String, String, bool)> =
        ctx.predefined.iter().map(|(k, v)| (k.clone(), v.clone(), false)).collect();
    for (k, v) in globals {
        all.push((k.clone(), v.clone(), composed.raw_variables.contains(k)));
    }
    for (k, v) in &ctx.pipeline_variables {
        // Pipeline variables are not expanded against YAML ones here (GitLab expands them in the
        // runner, where the sim's runner does too).
        all.push((k.clone(), v.clone(), true));
    }
    let mut dedup: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for (k, v, raw) in all {
        dedup.insert(k, (v, raw));
    }
    let list: Vec<(String, String, bool)> = dedup.into_iter().map(|(k, (v, r))| (k, v, r)).collect();
    expr::expand_all(&list)
}

/// Populates `composed` for the pipeline `ctx` describes. Errors are GitLab's 400 messages.
pub fn populate(composed: &Composed, ctx: &Context, files: &dyn Files) -> Result<CiConfig, Vec<String>> {
    let mut globals = composed.variables.clone();
    let mut name = None;
    if let Some(wf) = &composed.workflow {
        if let Some(rules) = &wf.rules {
            let vars = pipeline_vars(composed, &globals, ctx);
            match rules.iter().find(|r| rule_matches(r, &vars, files)) {
                Some(rule) if rule.when != Some(When::Never) => {
                    for (k, v) in &rule.variables {
                        globals.insert(k.clone(), v.clone());
                    }
                }
                _ => return Err(vec![WORKFLOW_REFUSED.into()]),
            }
        }
        if let Some(n) = &wf.name {
            let vars = pipeline_vars(composed, &globals, ctx);
            name = Some(expr::expand(n, &vars)).filter(|n| !n.is_empty());
        }
    }
    let has_workflow_rules = composed.workflow.as_ref().is_some_and(|w| w.rules.is_some());
    let mut jobs = Vec::new();
    for def in &composed.jobs {
        let mut spec = def.spec.clone();
        // What the job's rules see: the pipeline's variables, the job's name and stage, the
        // inherited top-level variables and the job's own (matrix values included).
        let mut list: Vec<(String, String, bool)> =
            ctx.predefined.iter().map(|(k, v)| (k.clone(), v.clone(), false)).collect();
        list.push(("CI_JOB_NAME".into(), spec.name.clone(), true));
        list.push(("CI_JOB_STAGE".into(), spec.stage.clone(), true));
        for (k, v) in &globals {
            if spec.inherit_variables.allows(k) {
                list.push((k.clone(), v.clone(), composed.raw_variables.contains(k)));
            }
        }
        for (k, v) in &spec.variables {
            list.push((k.clone(), v.clone(), def.raw_variables.contains(k)));
        }
        for (k, v) in &ctx.pipeline_variables {
            list.push((k.clone(), v.clone(), true));
        }
        let mut dedup: BTreeMap<String, (String, bool)> = BTreeMap::new();
        for (k, v, raw) in list {
            dedup.insert(k, (v, raw));
        }
        let vars = expr::expand_all(&dedup.into_iter().map(|(k, (v, r))| (k, v, r)).collect::<Vec<_>>());
        if let Some(rules) = &def.rules {
            let Some(rule) = rules.iter().find(|r| rule_matches(r, &vars, files)) else { continue };
            let when = rule.when.unwrap_or(if def.when_given { def.spec.when } else { When::OnSuccess });
            if when == When::Never {
                continue;
            }
            spec.when = when;
            spec.allow_failure = match rule.allow_failure {
                Some(b) => b,
                // With rules, a manual job is not allowed to fail unless it says so (GitLab's
                // `rules:when: manual` default).
                None if def.allow_failure_given => def.spec.allow_failure,
                None => false,
            };
            if rule.allow_failure.is_some() {
                spec.allow_failure_exit_codes.clear();
            }
            for (k, v) in &rule.variables {
                spec.variables.insert(k.clone(), v.clone());
            }
            if let Some(needs) = &rule.needs {
                spec.needs = Some(needs.iter().map(|n| n.job.clone()).collect());
                spec.need_details = needs.clone();
            }
            if let Some(si) = rule.start_in {
                spec.start_in = Some(si);
            }
            if spec.when == When::Delayed && spec.start_in.is_none() {
                return Err(vec![format!("jobs:{} rules:start_in should be a duration", spec.name)]);
            }
            if let Some(i) = rule.interruptible {
                spec.interruptible = i;
            }
        } else {
            let default_only = Policy { refs: Some(vec!["branches".into(), "tags".into()]), ..Policy::default() };
            let only = match &def.only {
                Some(o) => Some(o),
                None if def.except.is_none() && has_workflow_rules => None,
                None => Some(&default_only),
            };
            if let Some(o) = only
                && !policy_parts(o, ctx, &vars, files).iter().all(|b| *b)
            {
                continue;
            }
            if let Some(e) = &def.except
                && policy_parts(e, ctx, &vars, files).iter().any(|b| *b)
            {
                continue;
            }
        }
        if let Some(env) = &spec.environment {
            spec.environment = Some(expr::expand(env, &vars));
        }
        jobs.push(spec);
    }
    // A pipeline with only `.pre`/`.post` jobs does not run either.
    if jobs.iter().all(|j| j.stage == ".pre" || j.stage == ".post") {
        return Err(vec![EMPTY_PIPELINE.into()]);
    }
    let names: Vec<String> = jobs.iter().map(|j| j.name.clone()).collect();
    for job in &mut jobs {
        let mut kept = Vec::new();
        for need in &job.need_details {
            if names.contains(&need.job) {
                kept.push(need.clone());
            } else if !need.optional {
                return Err(vec![format!(
                    "'{}' job needs '{}' job, but '{}' does not exist in the pipeline. This might be because of the only, except, or rules keywords. To need a job that sometimes does not exist in the pipeline, use needs:optional.",
                    job.name, need.job, need.job
                )]);
            }
        }
        if job.needs.is_some() {
            job.needs = Some(kept.iter().map(|n| n.job.clone()).collect());
        }
        job.need_details = kept;
        if let Some(deps) = &mut job.dependencies {
            deps.retain(|d| names.contains(d));
        }
    }
    let mut stages = composed.stages.clone();
    jobs.sort_by_key(|j| stages.iter().position(|s| *s == j.stage).unwrap_or(usize::MAX));
    stages.retain(|s| jobs.iter().any(|j| j.stage == *s));
    Ok(CiConfig {
        stages,
        variables: globals,
        jobs,
        name,
        warnings: composed.warnings.clone(),
        merged_yaml: composed.merged_yaml.clone(),
        includes: composed.includes.clone(),
    })
}
