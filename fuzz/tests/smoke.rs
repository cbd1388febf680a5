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

/// The corpus reaches past the first check of each decoder: these count
/// corpus inputs that decode all the way, so that a corpus that rots into
/// inputs refused at the door fails here rather than fuzzing nothing.
mod depth {
    use std::collections::HashMap;

    use bytes::Bytes;
    use flower_fuzz::{objects_of, smoke::corpus_files};
    use flower_message::{inflate, Limits, ObjectId, ObjectTree};
    use prost::Message as _;

    fn inputs(name: &str) -> Vec<Vec<u8>> {
        corpus_files(name)
            .iter()
            .map(|p| std::fs::read(p).expect("readable corpus file"))
            .collect()
    }

    fn count(name: &str, ok: impl Fn(&[u8]) -> bool) -> usize {
        inputs(name).iter().filter(|i| ok(i)).count()
    }

    #[test]
    fn npy_inputs_decode() {
        assert!(count("npy", |i| flower_core::npy::decode_npy(i).is_ok()) >= 3);
    }

    #[test]
    fn npz_inputs_read() {
        let read = |i: &[u8]| {
            flower_core::npz::read_npz_from(std::io::Cursor::new(i)).is_ok_and(|e| !e.is_empty())
        };
        assert!(count("npz", read) >= 2);
    }

    #[test]
    fn client_messages_convert() {
        let ok = |i: &[u8]| {
            flower_proto::ClientMessage::decode(i)
                .ok()
                .and_then(|m| flower_core::ClientMessage::try_from(m).ok())
                .is_some_and(|m| match m {
                    flower_core::ClientMessage::Fit(r) => {
                        flower_core::parameters_to_ndarrays(&r.parameters)
                            .is_ok_and(|a| !a.is_empty())
                    }
                    _ => false,
                })
        };
        assert!(count("client_message", ok) >= 1);
    }

    #[test]
    fn fedxgb_inputs_hold_several_models() {
        assert!(count("fedxgb_json", |i| i.split(|&b| b == 0).count() >= 2) >= 2);
    }

    #[test]
    fn auth_inputs_carry_a_valid_token() {
        let valid = |i: &[u8]| {
            i.windows(b"fuzz-token-1".len())
                .any(|w| w == b"fuzz-token-1")
        };
        assert!(count("auth_header", valid) >= 1);
    }

    #[test]
    fn fleet_objects_inflate() {
        let inflates = |i: &[u8]| {
            let objects = objects_of(i);
            let Some(&(root, _)) = objects.last() else {
                return false;
            };
            let store: HashMap<ObjectId, Bytes> = objects.into_iter().collect();
            let limits = Limits::default();
            ObjectTree::from_objects(&root, &store, &limits)
                .and_then(|tree| inflate(&tree, &store, &limits))
                .is_ok_and(|m| {
                    m.content()
                        .is_some_and(|c| c.array_record("arrays").is_some())
                })
        };
        assert!(count("fleet_objects", inflates) >= 1);
    }

    #[test]
    fn fleet_protos_convert() {
        let converts = |i: &[u8]| {
            flower_proto::Message::decode(i)
                .ok()
                .and_then(|m| flower_message::Message::try_from(m).ok())
                .is_some_and(|m| m.content().is_some())
        };
        assert!(count("fleet_proto", converts) >= 1);
    }
}

#[test]
fn a_panicking_target_fails_the_smoke_run_and_its_input_is_saved() {
    fn panics_on_long_input(data: &[u8]) {
        assert!(data.len() < 64, "long input");
    }
    let err = smoke::run("npy", panics_on_long_input, 10, 1).expect_err("the target panics");
    assert!(err.contains("panicked"), "{err}");
    assert!(err.contains("saved to"), "{err}");
}
