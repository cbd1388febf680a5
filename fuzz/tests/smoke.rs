//! Fuzz smoke run: every target over its committed corpus plus a short
//! deterministic mutation run (`FUZZ_SMOKE_MUTATIONS`, default 3000 per
//! target; `FUZZ_SMOKE_SEED` to vary it).

use flower_fuzz::{smoke, TARGETS};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn smoke(name: &str) {
    let (_, target) = TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .expect("a known target");
    let mutations = env_or("FUZZ_SMOKE_MUTATIONS", 3000) as usize;
    let seed = env_or("FUZZ_SMOKE_SEED", 0x5eed_f1a5);
    // Panics are caught and reported with the saved input; keep the default
    // hook's message for the one that fails.
    match smoke::run(name, *target, mutations, seed) {
        Ok(stats) => eprintln!(
            "{name}: {} corpus inputs, {} mutations: no crash",
            stats.corpus, stats.mutations
        ),
        Err(e) => panic!("{e}"),
    }
}

macro_rules! smoke_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            smoke(stringify!($name));
        }
    )*};
}

smoke_tests!(
    npy,
    npz,
    client_message,
    auth_header,
    fedxgb_json,
    fleet_objects,
    fleet_proto
);

#[test]
fn every_target_has_a_smoke_test_and_a_corpus() {
    let names = [
        "npy",
        "npz",
        "client_message",
        "auth_header",
        "fedxgb_json",
        "fleet_objects",
        "fleet_proto",
    ];
    let known: Vec<&str> = TARGETS.iter().map(|(n, _)| *n).collect();
    assert_eq!(known, names);
    for name in names {
        assert!(
            !smoke::corpus_files(name).is_empty(),
            "no corpus for {name}"
        );
    }
}
