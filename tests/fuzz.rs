//! The fuzz targets' short run, on stable: every committed corpus input (`fuzz/corpus/<target>/`)
//! and then seeded mutations of them (byte flips, inserts, deletions, splices, repeated chunks,
//! interesting numbers) through the very functions `cargo fuzz` drives (`fuzz/src/lib.rs`).
//! Deterministic: the seed is fixed (`CLOUDCI_FUZZ_SEED` changes it, `CLOUDCI_FUZZ_RUNS` the
//! count). A failing input is written to `target/fuzz-failures/<target>-<n>` and named in the
//! panic, so `cargo fuzz run <target> <file>` reproduces it. The long campaign is `cargo fuzz`
//! (RELIABILITY.md).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[allow(unreachable_pub, missing_docs)]
#[path = "../fuzz/src/lib.rs"]
mod targets;

/// xorshift64*: a tiny deterministic generator (the mutations need nothing better).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 { 0 } else { (self.next() % n as u64) as usize }
    }
}

/// Tokens the parsers care about, spliced in whole: mutations that flip bytes rarely make them.
const DICTIONARY: &[&[u8]] = &[
    b"\"",
    b"{",
    b"}",
    b"[",
    b"]",
    b":",
    b",",
    b"null",
    b"-1",
    b"0",
    b"18446744073709551616",
    b"1e999",
    b"99999999999999999999",
    b"\\u0000",
    b"\xff\xfe",
    b"\n",
    b"=",
    b"&",
    b"%",
    b"%ff",
    b"v1,",
    b"whsec_",
    b"Bearer ",
    b"\"status\":",
    b"\"builds\":[",
    b"\"id\":",
    b"since=",
    b"pipeline=",
    b"project=",
    b"[projects.",
    b"[targets.",
    b"jobs = [",
    b"extends:",
    b"include:",
    b"rules:\n  - if: ",
    b"needs:",
    b"parallel:\n    matrix:",
    b"!reference [",
    b"timeout: ",
    b"999999999999 years",
    b"*anchor",
    b"&anchor ",
    b"<<: *",
    b"${CI_",
    b"=~ /",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>]) {
    for _ in 0..=rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = rng.next() as u8;
            }
            2 => {
                let at = rng.below(len + 1);
                input.insert(at, rng.next() as u8);
            }
            3 if len > 0 => {
                let at = rng.below(len);
                let n = rng.below((len - at).min(64)) + 1;
                input.drain(at..at + n);
            }
            4 => {
                let token = DICTIONARY[rng.below(DICTIONARY.len())];
                let at = rng.below(len + 1);
                input.splice(at..at, token.iter().copied());
            }
            5 if len > 0 => {
                // Repeat a chunk: deep nesting, long lists, long numbers.
                let at = rng.below(len);
                let n = rng.below((len - at).min(32)) + 1;
                let chunk = input[at..at + n].to_vec();
                for _ in 0..=rng.below(16) {
                    input.splice(at..at, chunk.iter().copied());
                }
            }
            6 => {
                // Splice in part of another input.
                let other = &corpus[rng.below(corpus.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let to = from + rng.below(other.len() - from) + 1;
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[from..to].iter().copied());
                }
            }
            _ if len > 0 => {
                input.truncate(rng.below(len));
            }
            _ => input.push(rng.next() as u8),
        }
    }
}

fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files.iter().map(|f| std::fs::read(f).unwrap()).collect()
}

/// Runs `input` through `target`; on a panic, keeps the input and fails naming it.
fn run_one(name: &str, target: targets::Target, input: &[u8], n: usize) {
    if std::panic::catch_unwind(|| target(input)).is_err() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/fuzz-failures");
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}-{n}"));
        std::fs::write(&file, input).unwrap();
        panic!(
            "fuzz target {name} failed on input {n}, kept in {} ({:?})",
            file.display(),
            String::from_utf8_lossy(input)
        );
    }
}

/// Replays the corpus, then mutates it for `runs` inputs or `budget`, whichever ends first.
fn short_run(name: &str) {
    let target = targets::TARGETS.iter().find(|(n, _)| *n == name).expect("a known target").1;
    let seeds = corpus(name);
    assert!(!seeds.is_empty(), "fuzz/corpus/{name} is empty");
    for (n, input) in seeds.iter().enumerate() {
        run_one(name, target, input, n);
    }
    let runs: usize = std::env::var("CLOUDCI_FUZZ_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(3000);
    let seed: u64 = std::env::var("CLOUDCI_FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed);
    // A different stream per target, all from one seed.
    let mut rng =
        Rng(seed ^ name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| (h ^ u64::from(b)).wrapping_mul(0x1b3)) | 1);
    // Bounds the time on a loaded machine; the inputs stay the same, only fewer may run.
    let budget = Duration::from_secs(8);
    let started = Instant::now();
    let mut ran = 0;
    while ran < runs && started.elapsed() < budget {
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input, &seeds);
        run_one(name, target, &input, seeds.len() + ran);
        ran += 1;
    }
    eprintln!("fuzz {name}: {} corpus inputs, {ran} mutations in {:.1?}", seeds.len(), started.elapsed());
}

#[test]
fn webhook_parse_and_ingest() {
    short_run("webhook");
}

#[test]
fn signature_check() {
    short_run("verify");
}

#[test]
fn event_stream_query_and_last_event_id() {
    short_run("sse");
}

#[test]
fn config_file() {
    short_run("config");
}

#[test]
fn gitlab_sim_ci_reader() {
    short_run("ci");
}
