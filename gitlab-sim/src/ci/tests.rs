use std::collections::BTreeMap;

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
    assert_eq!(build.notes, ["the sim's shell executor runs without containers: image gcc:13 not used"]);
}

#[test]
fn errors_read_like_gitlabs() {
    let e = parse("build:\n  script: x\n  foo: {}\n").unwrap_err();
    assert_eq!(e, "jobs:build config contains unknown keys: foo");
    let e = parse("build:\n  stage: nope\n  script: x\n").unwrap_err();
    assert!(e.contains("chosen stage nope does not exist"), "{e}");
    let e = parse("build:\n  stage: build\n").unwrap_err();
    assert_eq!(e, "jobs:build config should implement the script:, run:, or trigger: keyword");
    let e = parse("a:\n  script: x\n  needs: [b]\n").unwrap_err();
    assert_eq!(e, "a job: undefined need: b");
    assert_eq!(parse("include: x.yml\n").unwrap_err(), "Local file `x.yml` does not exist!");
    assert!(parse(": : :").is_err());
}

/// Files in memory, for includes, `exists` and `changes`.
#[derive(Default, Clone)]
pub(super) struct Mem {
    pub files: BTreeMap<String, String>,
    pub changed: Option<Vec<String>>,
    pub others: BTreeMap<String, Mem>,
}

impl Files for Mem {
    fn read(&self, path: &str) -> Option<String> {
        self.files.get(path).cloned()
    }
    fn list(&self) -> Vec<String> {
        self.files.keys().cloned().collect()
    }
    fn project(&self, project: &str, _: Option<&str>) -> Result<Box<dyn Files>, String> {
        self.others.get(project).map(|m| Box::new(m.clone()) as Box<dyn Files>).ok_or_else(|| format!("Project `{project}` not found or access denied! Make sure any includes in the pipeline configuration are correctly defined."))
    }
    fn changed(&self, _: Option<&str>) -> Option<Vec<String>> {
        self.changed.clone()
    }
    fn origin(&self) -> (String, String) {
        ("acme/fw".into(), "abc".into())
    }
}

fn ctx(source: &str, git_ref: &str, tag: bool) -> Context {
    Context::new(source, git_ref, tag)
}

fn run(text: &str, files: &Mem, ctx: &Context) -> Result<CiConfig, Vec<String>> {
    let composed = compose(text, files, ctx)?;
    populate(&composed, ctx, files)
}

fn names(cfg: &CiConfig) -> Vec<&str> {
    cfg.jobs.iter().map(|j| j.name.as_str()).collect()
}

#[test]
fn allow_failure_exit_codes_and_matrix_needs() {
    let text = r#"
stages: [build, test]
build:
  stage: build
  script: make
  parallel:
    matrix:
      - BOARD: [stm32f4, nrf52840]
        PROFILE: release
test:
  stage: test
  script: ./hil.sh
  allow_failure:
    exit_codes: [77, 78]
  parallel:
    matrix:
      - BOARD: [stm32f4, nrf52840]
  needs:
    - job: build
      parallel:
        matrix:
          - BOARD: $[[ matrix.BOARD ]]
            PROFILE: release
lint:
  stage: test
  script: "true"
  needs: [build]
"#;
    let cfg = run(text, &Mem::default(), &ctx("api", "main", false)).unwrap();
    assert_eq!(
        names(&cfg),
        ["build: [stm32f4, release]", "build: [nrf52840, release]", "test: [stm32f4]", "test: [nrf52840]", "lint"]
    );
    let t = &cfg.jobs[2];
    assert_eq!(t.needs.as_deref(), Some(&["build: [stm32f4, release]".to_owned()][..]));
    assert_eq!(t.allow_failure_exit_codes, [77, 78]);
    assert!(!t.allow_failure);
    assert_eq!(t.variables["BOARD"], "stm32f4");
    assert_eq!(t.node, Some((1, 2)));
    // A need on a parallel job's base name means all of its instances.
    assert_eq!(cfg.jobs[4].needs.as_ref().unwrap().len(), 2);
    let n = run("a:\n  script: x\n  parallel: 3\n", &Mem::default(), &ctx("api", "main", false)).unwrap();
    assert_eq!(names(&n), ["a 1/3", "a 2/3", "a 3/3"]);
}

#[test]
fn extends_deep_merges_and_anchors_merge() {
    let text = r#"
.vars: &vars
  variables: {A: "1", B: "2"}
.base:
  image: gcc
  script: [echo base]
  variables: {A: "0", C: "3"}
  artifacts: {paths: [out/], expire_in: 1 week}
.mid:
  extends: .base
  tags: [arm]
  artifacts: {paths: [bin/]}
.top:
  extends: [.mid]
  variables: {D: "4"}
job:
  extends: .top
  <<: *vars
  script: [echo job]
"#;
    let cfg = run(text, &Mem::default(), &ctx("api", "main", false)).unwrap();
    let j = &cfg.jobs[0];
    assert_eq!(j.script, ["echo job"]);
    // Hashes merge, arrays replace; the merge key's variables stand in for the job's own.
    assert_eq!(j.variables.get("A").map(String::as_str), Some("1"));
    assert_eq!(j.variables.get("B").map(String::as_str), Some("2"));
    assert_eq!(j.artifact_paths, ["bin/"]);
    assert_eq!(j.artifacts.expire_in.as_deref(), Some("1 week"));
    assert_eq!(j.tags, ["arm"]);
    let e = run(
        ".a: {extends: .b, script: x}\n.b: {extends: .a}\nj: {extends: .a}\n",
        &Mem::default(),
        &ctx("api", "main", false),
    );
    assert!(e.unwrap_err()[0].contains("circular dependency detected in `extends`"));
    let e = run("j: {extends: .nope, script: x}\n", &Mem::default(), &ctx("api", "main", false)).unwrap_err();
    assert_eq!(e, ["j: unknown key in `extends` (.nope)"]);
}

#[test]
fn references_defaults_and_hidden_jobs() {
    let text = r#"
default:
  before_script: [echo default-before]
  after_script: [echo default-after]
  retry: {max: 2, when: [script_failure]}
before_script: [echo legacy]
.setup:
  script: [echo setup, echo more]
  rules:
    - if: $CI_PIPELINE_SOURCE == "api"
job:
  script:
    - !reference [.setup, script]
    - echo own
  rules:
    - !reference [.setup, rules]
other:
  inherit: {default: false}
  script: x
"#;
    let cfg = run(text, &Mem::default(), &ctx("api", "main", false)).unwrap();
    assert_eq!(names(&cfg), ["job", "other"]);
    let j = &cfg.jobs[0];
    assert_eq!(j.script, ["echo setup", "echo more", "echo own"]);
    assert_eq!(j.before_script, ["echo default-before"]);
    assert_eq!(j.after_script, ["echo default-after"]);
    assert_eq!(j.retry.max, 2);
    assert!(cfg.jobs[1].before_script.is_empty());
    let e = run("j:\n  script: !reference [.x, script]\n", &Mem::default(), &ctx("api", "main", false)).unwrap_err();
    assert_eq!(e, [r#"!reference [".x", "script"] could not be found"#]);
}

#[test]
fn rules_for_each_source_and_refusals() {
    let text = r#"
workflow:
  name: "fw $CI_COMMIT_REF_NAME"
  rules:
    - if: $CI_PIPELINE_SOURCE == "schedule"
      when: never
    - when: always
stages: [build, test, deploy]
build:
  stage: build
  script: make
  rules:
    - if: $CI_PIPELINE_SOURCE == "merge_request_event" || $CI_PIPELINE_SOURCE == "push"
    - if: $CI_PIPELINE_SOURCE == "api"
      variables: {FROM: api}
flash:
  stage: deploy
  script: flash
  rules:
    - if: $CI_COMMIT_TAG =~ /^v\d+/
      when: manual
    - if: $CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH
      when: delayed
      start_in: 10 minutes
docs:
  stage: test
  script: doxygen
  rules:
    - changes: [docs/**/*]
    - exists: ["Doxyfile"]
      when: manual
      allow_failure: true
"#;
    let files = Mem { files: [("Doxyfile".to_owned(), "x".to_owned())].into(), ..Mem::default() };
    let cfg = run(text, &files, &ctx("api", "main", false)).unwrap();
    assert_eq!(cfg.name.as_deref(), Some("fw main"));
    assert_eq!(names(&cfg), ["build", "docs", "flash"]);
    assert_eq!(cfg.jobs[0].variables["FROM"], "api");
    // `changes` is true for an API pipeline.
    assert_eq!(cfg.jobs[1].when, When::OnSuccess);
    assert_eq!(cfg.jobs[2].when, When::Delayed);
    assert_eq!(cfg.jobs[2].start_in, Some(std::time::Duration::from_secs(600)));
    // A push that changed nothing under docs/: the exists rule makes docs manual.
    let push = Mem { changed: Some(vec!["src/main.c".into()]), ..files.clone() };
    let cfg = run(text, &push, &ctx("push", "dev", false)).unwrap();
    assert_eq!(names(&cfg), ["build", "docs"]);
    assert!(cfg.jobs[1].when == When::Manual && cfg.jobs[1].allow_failure);
    let tag = run(text, &files, &ctx("web", "v1.2", true)).unwrap();
    assert_eq!(names(&tag), ["docs", "flash"]);
    // With rules, manual means not allowed to fail unless said.
    assert!(tag.jobs[1].when == When::Manual && !tag.jobs[1].allow_failure);
    assert_eq!(run(text, &files, &ctx("schedule", "main", false)).unwrap_err(), [WORKFLOW_REFUSED]);
    let only_push = "build:\n  script: make\n  rules:\n    - if: $CI_PIPELINE_SOURCE == \"push\"\n";
    assert_eq!(run(only_push, &files, &ctx("api", "main", false)).unwrap_err(), [EMPTY_PIPELINE]);
    let missing = "a:\n  stage: build\n  script: x\n  rules: [{if: '$X'}]\nb:\n  script: y\n  needs: [a]\n";
    let e = run(missing, &files, &ctx("api", "main", false)).unwrap_err();
    assert!(e[0].starts_with("'b' job needs 'a' job, but 'a' does not exist in the pipeline."), "{e:?}");
    let optional = "a:\n  stage: build\n  script: x\n  rules: [{if: '$X'}]\nb:\n  script: y\n  needs: [{job: a, optional: true}]\n";
    let cfg = run(optional, &files, &ctx("api", "main", false)).unwrap();
    assert_eq!(cfg.jobs[0].needs.as_deref(), Some(&[][..]));
}

#[test]
fn only_except() {
    let text = r#"
stages: [build, deploy]
build: {stage: build, script: make}
release:
  stage: deploy
  script: release
  only: [tags]
nightly:
  stage: deploy
  script: n
  only: {refs: [schedules], variables: ['$NIGHTLY == "1"']}
not-api:
  stage: deploy
  script: x
  except: [api, /^wip-/]
"#;
    let c = |source: &str, r: &str, tag: bool| {
        let mut cx = ctx(source, r, tag);
        cx.pipeline_variables.insert("NIGHTLY".into(), "1".into());
        run(text, &Mem::default(), &cx).map(|c| names(&c).iter().map(|s| s.to_string()).collect::<Vec<_>>())
    };
    assert_eq!(c("api", "main", false).unwrap(), ["build"]);
    assert_eq!(c("push", "v1", true).unwrap(), ["build", "release", "not-api"]);
    assert_eq!(c("schedule", "main", false).unwrap(), ["build", "nightly", "not-api"]);
    assert_eq!(c("push", "wip-x", false).unwrap(), ["build"]);
}

#[test]
fn includes_and_inputs() {
    let mut files = Mem::default();
    // Inputs belong to one file: a nested include without its own `spec` cannot use them.
    files
        .files
        .insert("ci/build.yml".into(), "build:\n  stage: build\n  script: make $[[ inputs.target ]]\n".to_owned());
    files.files.insert(
        "ci/tpl.yml".into(),
        "spec:\n  inputs:\n    target:\n      default: host\n      options: [host, arm]\n---\nbuild:\n  stage: build\n  script: make $[[ inputs.target ]]\n".to_owned(),
    );
    files.files.insert("ci/test.yml".into(), "test:\n  script: make test\n".to_owned());
    let mut other = Mem::default();
    other.files.insert("templates/lint.yml".into(), "lint:\n  script: lint\n".to_owned());
    files.others.insert("acme/ci-templates".into(), other);
    let text = r#"
include:
  - local: ci/test.yml
  - project: acme/ci-templates
    file: [templates/lint.yml]
    ref: main
stages: [build, test]
"#;
    let cfg = run(text, &files, &ctx("api", "main", false)).unwrap();
    assert_eq!(names(&cfg), ["test", "lint"]);
    assert_eq!(cfg.includes.len(), 2);
    let e = run("include: ci/none.yml\n", &files, &ctx("api", "main", false)).unwrap_err();
    assert_eq!(e, ["Local file `ci/none.yml` does not exist!"]);
    let e = run(
        "include:\n  - remote: https://example.com/x.yml\n  - template: Foo.gitlab-ci.yml\n",
        &files,
        &ctx("api", "main", false),
    )
    .unwrap_err();
    assert_eq!(
        e,
        [
            "Remote file `https://example.com/x.yml` could not be fetched because of a socket error!",
            "Template file `Foo.gitlab-ci.yml` is not a valid location!"
        ]
    );
    // Pipeline inputs for the main file's spec.
    let main = "spec:\n  inputs:\n    board:\n      options: [stm32f4, nrf52840]\n    hil:\n      type: boolean\n      default: false\n---\nbuild:\n  script: make BOARD=$[[ inputs.board ]]\n  allow_failure: $[[ inputs.hil ]]\n";
    let mut cx = ctx("api", "main", false);
    cx.inputs.insert("board".into(), serde_json::json!("nrf52840"));
    let cfg = run(main, &files, &cx).unwrap();
    assert_eq!(cfg.jobs[0].script, ["make BOARD=nrf52840"]);
    assert!(!cfg.jobs[0].allow_failure);
    cx.inputs.insert("board".into(), serde_json::json!("esp32"));
    assert!(
        run(main, &files, &cx).unwrap_err()[0]
            .contains("`esp32` cannot be used because it is not in the list of allowed options")
    );
    let e = run(main, &files, &ctx("api", "main", false)).unwrap_err();
    assert_eq!(e, ["`board` input: required value has not been provided"]);
    // An include with inputs.
    let with = "include:\n  - local: ci/tpl.yml\n    inputs: {target: arm}\nstages: [build]\n";
    let cfg = run(with, &files, &ctx("api", "main", false)).unwrap();
    assert_eq!(cfg.jobs[0].script, ["make arm"]);
    let e = run(
        "include: ci/build.yml
stages: [build]
",
        &files,
        &ctx("api", "main", false),
    )
    .unwrap_err();
    assert_eq!(e, ["inputs are not defined in the `spec` section of the configuration file"]);
}

#[test]
fn variables_and_keywords() {
    let text = r#"
variables:
  CHIP: nrf52
  BOARD: {value: "${CHIP}-dk", description: "the board", options: ["${CHIP}-dk", x]}
build:
  script: make
  variables: {OUT: build/$BOARD}
  timeout: 1h 30m
  retry: {max: 1, when: [script_failure], exit_codes: [137]}
  artifacts:
    paths: [out/]
    exclude: [out/*.o]
    when: always
    reports: {dotenv: build.env, junit: [report.xml]}
  coverage: '/Coverage: \d+\.\d+%/'
  resource_group: hw-rig
  environment: {name: review/$CI_COMMIT_REF_SLUG}
  interruptible: true
  services: [postgres:15]
  cache: {key: deps, paths: [.cache/]}
"#;
    let cfg = run(text, &Mem::default(), &ctx("api", "feature/x", false)).unwrap();
    let j = &cfg.jobs[0];
    assert_eq!(j.timeout, Some(std::time::Duration::from_secs(5400)));
    assert!(j.retry.applies("script_failure", Some(137)) && !j.retry.applies("script_failure", Some(1)));
    assert_eq!(j.artifacts.reports["dotenv"], ["build.env"]);
    assert_eq!(j.environment.as_deref(), Some("review/feature-x"));
    assert_eq!(j.resource_group.as_deref(), Some("hw-rig"));
    assert_eq!(j.notes.len(), 2);
    let e = run("variables: {A: true}\nb: {script: x}\n", &Mem::default(), &ctx("api", "main", false)).unwrap_err();
    assert_eq!(e, ["variables config should be a hash of key value pairs, value can be a hash"]);
    let e = run("b: {script: x, when: later}\n", &Mem::default(), &ctx("api", "main", false)).unwrap_err();
    assert_eq!(e, ["jobs:b when should be one of: on_success, on_failure, always, manual, delayed"]);
    let e = run("b: {script: x, only: [main], rules: [{when: always}]}\n", &Mem::default(), &ctx("api", "main", false))
        .unwrap_err();
    assert_eq!(e, ["jobs:b config key may not be used with `rules`: only"]);
    let e = run("b: {script: x, rules: [{if: '$A = 1'}]}\n", &Mem::default(), &ctx("api", "main", false)).unwrap_err();
    assert_eq!(e, ["jobs:b:rules:rule if invalid expression syntax"]);
    let e = run("default: {foo: 1}\nb: {script: x}\n", &Mem::default(), &ctx("api", "main", false)).unwrap_err();
    assert_eq!(e, ["default config contains unknown keys: foo"]);
}

#[test]
fn bridge_jobs() {
    let text = "stages: [build, child]\nbuild: {stage: build, script: make}\ntrigger-tests:\n  stage: child\n  trigger:\n    include: ci/child.yml\n    strategy: depend\n";
    let cfg = run(text, &Mem::default(), &ctx("api", "main", false)).unwrap();
    let b = &cfg.jobs[1];
    assert!(b.is_bridge() && b.trigger.as_ref().unwrap().depend);
    let e =
        run("t: {trigger: {include: x.yml}, script: y}\n", &Mem::default(), &ctx("api", "main", false)).unwrap_err();
    assert_eq!(e, ["jobs:t config contains unknown keys: script"]);
}

#[test]
fn durations() {
    assert_eq!(parse_duration("90"), Some(std::time::Duration::from_secs(90)));
    assert_eq!(parse_duration("2 hours 5 min"), Some(std::time::Duration::from_secs(7500)));
    assert_eq!(parse_duration("1 day"), Some(std::time::Duration::from_secs(86400)));
    assert_eq!(parse_duration("soon"), None);
    assert_eq!(parse_duration("999999999999 years"), None);
}
