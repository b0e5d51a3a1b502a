//! Reading and checking whole configuration files: every error located.

use super::*;

fn err(text: &str) -> String {
    parse(text, Path::new("cloudci.toml")).unwrap_err().to_string()
}

const GOOD: &str = r#"
[gitlab]
url = "https://gitlab.example.com"

[webhook]
tunnel = "none"
public_url = "https://ci.example.com"

[targets.stm32f4]
variables = { TARGET = "thumbv7em-none-eabihf", BOARD = "nucleo-f401re" }

[targets.rp2040]
variables = { TARGET = "thumbv6m-none-eabi" }

[projects.hal]
gitlab = "acme/hal"
targets = ["stm32f4"]

[projects.firmware]
gitlab = "acme/firmware"
targets = ["stm32f4", "rp2040"]
depends_on = ["hal"]
after_success = { merge_request = { target_branch = "main" }, auto_merge = false }

[groups]
boards = ["firmware", "hal"]
"#;

#[test]
fn the_reference_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/cloudci.toml");
    let c = load(Some(&path)).unwrap();
    assert_eq!(c.projects.len(), 2);
    assert_eq!(c.projects["firmware"].after_success.promote.as_ref().unwrap().git_ref, "release-testing");
    assert_eq!(c.groups["boards"].len(), 2);
}

#[test]
fn a_developers_relay_url_is_read_and_checked() {
    let c = parse("[relay]\nurl = \"https://relay.example.com:8791\"\n", Path::new("c.toml")).unwrap();
    assert_eq!(c.relay.url.as_deref(), Some("https://relay.example.com:8791"));
    for bad in ["relay.example.com", "ftp://relay.example.com", "http://"] {
        let e = err(&format!("[relay]\nurl = \"{bad}\"\n"));
        assert!(e.contains("relay.url"), "{bad}: {e}");
    }
}

#[test]
fn reads_the_design_example() {
    let c = parse(GOOD, Path::new("/etc/cloudci.toml")).unwrap();
    assert_eq!(c.projects["firmware"].targets.len(), 2);
    assert_eq!(c.projects["firmware"].after_success.merge_request.as_ref().unwrap().target_branch, "main");
    assert!(c.projects["firmware"].after_success.download_artifacts);
    assert_eq!(c.webhook.listen.port(), 8787);
    assert_eq!(c.resolve(Path::new("state")), PathBuf::from("/etc/state"));
}

#[test]
fn targets_by_jobs_are_read_and_checked_with_their_place() {
    let text = "[targets.a]\nmatrix = { BOARD = \"a\" }\n[targets.b]\njobs = [\"build: [b]\"]\n[targets.c]\nvariables = { BOARD = \"c\" }\n[projects.p]\ngitlab = \"x/y\"\ntargets = [\"a\", \"b\", \"c\"]\n";
    let c = parse(text, Path::new("c.toml")).unwrap();
    assert!(c.targets["a"].selector().unwrap().matches("build: [a]"));
    assert!(c.targets["b"].selector().unwrap().matches("build: [b]"));
    assert!(c.targets["c"].selector().is_none());
    let e = parse("[targets.a]\njobs = [\"\"]\n", Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.starts_with("c.toml:2: targets.a.jobs: a job name is empty"), "{e}");
    let e = parse("[targets.a]\n\nmatrix = { BOARD = \"\" }\n", Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.starts_with("c.toml:3: targets.a.matrix"), "{e}");
    let e = parse("[targets.a]\nmatrx = { BOARD = \"a\" }\n", Path::new("c.toml")).unwrap_err().to_string();
    assert!(e.starts_with("c.toml:2:") && e.contains("matrx"), "{e}");
}

#[test]
fn errors_name_file_line_and_key() {
    let e = err("[gitlab]\nurl = \"x\"\ntoken = \"glpat-x\"\n");
    assert!(e.starts_with("cloudci.toml:3:") && e.contains("unknown field `token`"), "{e}");
    let e = err(&GOOD.replace("targets = [\"stm32f4\", \"rp2040\"]", "targets = [\"stm32f4\", \"esp32\"]"));
    assert!(
        e.contains("cloudci.toml:21:") && e.contains("projects.firmware.targets") && e.contains("\"esp32\""),
        "{e}"
    );
    assert!(e.contains("known targets: rp2040, stm32f4"), "{e}");
    let e = err(&GOOD.replace("boards = [\"firmware\", \"hal\"]", "boards = [\"firmware\", \"bootloader\"]"));
    assert!(
        e.contains("groups.boards") && e.contains("bootloader") && e.contains("known projects: firmware, hal"),
        "{e}"
    );
    let cyclic = GOOD.replace("targets = [\"stm32f4\"]\n", "targets = [\"stm32f4\"]\ndepends_on = [\"firmware\"]\n");
    let e = err(&cyclic);
    assert!(e.contains("dependency cycle") && e.contains("firmware → hal → firmware"), "{e}");
    assert!(e.contains("cloudci.toml:23:") && e.contains("depends_on = [\"hal\"]"), "{e}");
    let e = err("[webhook]\nlisten = \"nowhere\"\n");
    assert!(e.contains("cloudci.toml:2:") && e.contains("listen = \"nowhere\""), "{e}");
    let e = err("[webhook]\ntunnel = \"none\"\n");
    assert!(e.contains("public_url is required"), "{e}");
    let e = err("[gitlab]\nurl = \"x\"\nmax_concurrent_pipelines = 0\n");
    assert!(e.starts_with("cloudci.toml:3:") && e.contains("gitlab.max_concurrent_pipelines"), "{e}");
    let e = err("[gitlab]\nmax_concurrent_pipelines = -2\n");
    assert!(e.starts_with("cloudci.toml:2:"), "{e}");
}

#[test]
fn pipelines_at_once_default_and_configured() {
    let c = parse(GOOD, Path::new("cloudci.toml")).unwrap();
    assert_eq!(c.gitlab.max_concurrent_pipelines(), DEFAULT_MAX_CONCURRENT_PIPELINES);
    let c = parse("[gitlab]\nmax_concurrent_pipelines = 3\n", Path::new("cloudci.toml")).unwrap();
    assert_eq!(c.gitlab.max_concurrent_pipelines(), 3);
}
