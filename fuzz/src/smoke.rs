//! The fuzz smoke run: replays a target's committed corpus, then a short,
//! deterministic mutation run from it, with no libFuzzer and no nightly
//! flags, so that plain `cargo test` keeps every target building and its
//! corpus passing.

use std::fs;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

/// Longest input the mutator makes (libFuzzer's `-max_len` in the README's
/// campaign commands).
pub const MAX_LEN: usize = 64 * 1024;

/// What one smoke run did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Corpus files replayed.
    pub corpus: usize,
    /// Mutated inputs run.
    pub mutations: usize,
}

/// xorshift64*: small, seedable, the same everywhere.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform-enough in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Interesting byte values, as libFuzzer's mutators use them.
const INTERESTING: [u8; 10] = [0, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'-', b'"', b' '];

/// One to four libFuzzer-style mutations of `input`, splicing from `other`.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, other: &[u8]) {
    for _ in 0..=rng.below(4) {
        match rng.below(7) {
            0 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] ^= 1 << rng.below(8);
            }
            1 if !input.is_empty() => {
                let i = rng.below(input.len());
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if !input.is_empty() => {
                let start = rng.below(input.len());
                let end = start + rng.below((input.len() - start).min(16) + 1);
                input.drain(start..end);
            }
            3 => {
                let at = rng.below(input.len() + 1);
                let n = rng.below(8) + 1;
                let bytes: Vec<u8> = (0..n).map(|_| rng.next() as u8).collect();
                input.splice(at..at, bytes);
            }
            4 if !input.is_empty() => {
                let start = rng.below(input.len());
                let end = start + rng.below((input.len() - start).min(64) + 1);
                let copy = input[start..end].to_vec();
                let at = rng.below(input.len() + 1);
                input.splice(at..at, copy);
            }
            5 if !other.is_empty() => {
                let at = rng.below(input.len() + 1);
                let from = rng.below(other.len());
                input.truncate(at);
                input.extend_from_slice(&other[from..]);
            }
            _ if !input.is_empty() => {
                // Numbers and lengths in text formats.
                let i = rng.below(input.len());
                input[i] = b'0' + rng.below(10) as u8;
            }
            _ => input.push(rng.next() as u8),
        }
    }
    input.truncate(MAX_LEN);
}

/// Runs `target` on `input`; on a panic, saves the input under
/// `artifacts/smoke/` of the fuzz crate and says where.
fn run_one(name: &str, target: crate::Target, input: &[u8], what: &str) -> Result<(), String> {
    if catch_unwind(AssertUnwindSafe(|| target(input))).is_ok() {
        return Ok(());
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("artifacts/smoke");
    let path = dir.join(format!("{name}-crash-{:016x}", fnv1a(input)));
    let saved = fs::create_dir_all(&dir).and_then(|()| fs::write(&path, input));
    Err(format!(
        "{name}: {what} panicked (input of {} bytes {}; reproduce with \
         `cargo fuzz run {name} {}`)",
        input.len(),
        match saved {
            Ok(()) => format!("saved to {}", path.display()),
            Err(e) => format!("not saved: {e}"),
        },
        path.display()
    ))
}

fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The committed corpus of `name`, sorted by file name.
pub fn corpus_files(name: &str) -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(name);
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// Replays the corpus of `name` through `target`, then runs `mutations`
/// inputs mutated from it with a generator seeded by `seed`. Fails on an
/// empty corpus, an unreadable file or the first panic.
pub fn run(
    name: &str,
    target: crate::Target,
    mutations: usize,
    seed: u64,
) -> Result<Stats, String> {
    let files = corpus_files(name);
    if files.is_empty() {
        return Err(format!("{name}: corpus/{name}/ is empty or missing"));
    }
    let mut corpus = Vec::with_capacity(files.len());
    for file in &files {
        let input = fs::read(file).map_err(|e| format!("{}: {e}", file.display()))?;
        run_one(
            name,
            target,
            &input,
            &format!("corpus file {}", file.display()),
        )?;
        corpus.push(input);
    }
    let mut rng = Rng(seed | 1);
    for i in 0..mutations {
        let mut input = corpus[rng.below(corpus.len())].clone();
        let other = &corpus[rng.below(corpus.len())];
        mutate(&mut rng, &mut input, other);
        run_one(name, target, &input, &format!("mutation {i} (seed {seed})"))?;
    }
    Ok(Stats {
        corpus: corpus.len(),
        mutations,
    })
}
