//! A small coverage-blind fuzzer for the stable toolchain (feature `testing`): it takes the
//! seed inputs of a committed corpus directory, mutates them the way libFuzzer does (bit and
//! byte flips, inserted, deleted and repeated runs, interesting numbers, splices of two
//! seeds) and feeds each result to a target for a time budget. A panic is a failure: the input
//! is written next to the corpus as `crash-<hash>` (commit it once fixed, and it stays a
//! regression seed) and the run stops with its path and the seed to replay it.
//!
//! `SWITCHYARD_FUZZ_SECONDS` sets the budget per target (default 5); `SWITCHYARD_FUZZ_SEED`
//! replays a run. CI runs every target; `cargo-fuzz` needs a nightly toolchain, which these
//! machines do not have.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// A deterministic random source (xorshift64*).
pub struct Rng(u64);

impl Rng {
    /// Seeded with `seed` (0 is replaced, xorshift cannot start from it).
    pub fn new(seed: u64) -> Rng {
        Rng(seed.max(1))
    }

    /// The next value.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `n` (0 when `n` is 0).
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }
}

const INTERESTING: &[&[u8]] = &[
    b"0",
    b"-1",
    b"9223372036854775807",
    b"-9223372036854775808",
    b"18446744073709551616",
    b"79228162514264337593543950336",
    b"1e308",
    b"0.0000000000000000000000000001",
    b"\"\"",
    b"null",
    b"[]",
    b"{}",
    b"\\u0000",
    b"\xff\xfe",
    b"\"2026-02-30\"",
    b"\"+262143-01-01\"",
    b"}}}}",
    b"[[[[[[[[",
    b"\x00\x00\x00\x00",
    b"\xff\xff\xff\xff\x0f",
];

/// One mutation of `input`, possibly splicing in part of `other`.
pub fn mutate(rng: &mut Rng, input: &[u8], other: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(out.len() + 1);
        match rng.below(8) {
            0 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] ^= 1 << rng.below(8);
            }
            1 if !out.is_empty() => {
                let i = rng.below(out.len());
                out[i] = rng.next_u64() as u8;
            }
            2 if at < out.len() => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
            3 => {
                let word = INTERESTING[rng.below(INTERESTING.len())];
                out.splice(at..at, word.iter().copied());
            }
            4 if !out.is_empty() => {
                let from = rng.below(out.len());
                let len = 1 + rng.below(32.min(out.len() - from));
                let run: Vec<u8> = out[from..from + len].to_vec();
                for _ in 0..1 + rng.below(4) {
                    out.splice(at..at, run.iter().copied());
                }
            }
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let len = 1 + rng.below(64.min(other.len() - from));
                out.splice(at..at, other[from..from + len].iter().copied());
            }
            6 => out.truncate(at),
            _ => out.insert(at, rng.next_u64() as u8),
        }
    }
    out
}

/// The seeds of a corpus directory (every file in it, sorted).
pub fn corpus(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut seeds: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .map(|p| {
            let bytes = std::fs::read(&p).unwrap();
            (p, bytes)
        })
        .collect();
    seeds.sort();
    assert!(!seeds.is_empty(), "corpus {} is empty", dir.display());
    seeds
}

/// Feeds `target` every seed of `dir`, then mutations of them until the time budget is spent;
/// returns how many inputs ran. Panics (after saving the input) if the target panics.
pub fn run(name: &str, dir: &Path, target: impl Fn(&[u8])) -> usize {
    let seconds = std::env::var("SWITCHYARD_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let seed = std::env::var("SWITCHYARD_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    let seeds = corpus(dir);
    let mut rng = Rng::new(seed);
    let budget = Duration::from_secs(seconds);
    let started = Instant::now();
    let mut ran = 0;
    let try_one = |input: &[u8]| {
        if catch_unwind(AssertUnwindSafe(|| target(input))).is_err() {
            let digest: String = Sha256::digest(input)
                .iter()
                .take(8)
                .map(|b| format!("{b:02x}"))
                .collect();
            let path = dir.join(format!("crash-{digest}"));
            let _ = std::fs::write(&path, input);
            panic!(
                "fuzz target `{name}` panicked on {} (run with SWITCHYARD_FUZZ_SEED={seed} to replay)",
                path.display()
            );
        }
    };
    for (_, bytes) in &seeds {
        try_one(bytes);
        ran += 1;
    }
    while started.elapsed() < budget {
        let (_, a) = &seeds[rng.below(seeds.len())];
        let (_, b) = &seeds[rng.below(seeds.len())];
        let input = mutate(&mut rng, a, b);
        try_one(&input);
        ran += 1;
    }
    eprintln!(
        "fuzz `{name}`: {ran} inputs in {:?} (seed {seed})",
        started.elapsed()
    );
    ran
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds_and_vary() {
        let mut rng = Rng::new(7);
        let mut distinct = std::collections::BTreeSet::new();
        for _ in 0..10_000 {
            let out = mutate(&mut rng, b"{\"a\": 1}", b"[true, null]");
            distinct.insert(out);
        }
        assert!(distinct.len() > 1000);
        for _ in 0..1000 {
            mutate(&mut rng, b"", b"");
            mutate(&mut rng, b"x", b"");
        }
    }
}
