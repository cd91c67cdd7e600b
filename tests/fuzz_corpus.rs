//! The fuzz targets on stable, in bounded time: every committed corpus file of `fuzz/corpus/`
//! through its target, then a fixed number of random and mutated inputs per target from a
//! seeded generator (set `TOWER_SHIELD_FUZZ_ITERATIONS` for more). A longer, coverage-guided
//! session is described in `fuzz/README.md`.
#![cfg(feature = "fuzzing")]

use std::{
    fs,
    panic::{self, AssertUnwindSafe},
    path::{Path, PathBuf},
};

use tower_shield::__fuzz::TARGETS;

/// Inputs per target beyond the corpus.
const ITERATIONS: usize = 4_000;
/// The longest generated input.
const MAX_LEN: usize = 512;

/// splitmix64: small, seeded, good enough to pick bytes and mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        // Half the time from the bytes parsers care about, so mutations reach past the first check.
        const INTERESTING: &[u8] =
            b" \t\r\n\0\"\\,;:=.-_/+~[]{}0123456789eE-abcfABCF\x7f\x80\xc3\xff";
        if self.next() & 1 == 0 {
            INTERESTING[self.below(INTERESTING.len())]
        } else {
            self.next() as u8
        }
    }
}

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.is_file())
        .collect();
    files.sort();
    files.into_iter().map(|path| (path.clone(), fs::read(&path).expect("readable"))).collect()
}

fn mutate(rng: &mut Rng, seeds: &[(PathBuf, Vec<u8>)]) -> Vec<u8> {
    let mut data = if seeds.is_empty() || rng.below(8) == 0 {
        (0..rng.below(MAX_LEN)).map(|_| rng.byte()).collect()
    } else {
        seeds[rng.below(seeds.len())].1.clone()
    };
    for _ in 0..=rng.below(4) {
        match rng.below(6) {
            0 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] ^= 1 << rng.below(8);
            }
            1 if !data.is_empty() => {
                let i = rng.below(data.len());
                data[i] = rng.byte();
            }
            2 => {
                let i = rng.below(data.len() + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| rng.byte()).collect();
                data.splice(i..i, bytes);
            }
            3 if !data.is_empty() => {
                let i = rng.below(data.len());
                let end = (i + 1 + rng.below(8)).min(data.len());
                data.drain(i..end);
            }
            4 if !data.is_empty() => {
                // Repeat a slice: deep nesting, long lists, many headers.
                let i = rng.below(data.len());
                let end = (i + 1 + rng.below(4)).min(data.len());
                let chunk = data[i..end].to_vec();
                for _ in 0..rng.below(80) {
                    data.splice(i..i, chunk.iter().copied());
                }
            }
            _ if !seeds.is_empty() => {
                // Splice in part of another seed.
                let other = &seeds[rng.below(seeds.len())].1;
                let from = rng.below(other.len() + 1);
                let to = from + rng.below(other.len() - from + 1);
                let at = rng.below(data.len() + 1);
                data.splice(at..at, other[from..to].iter().copied());
            }
            _ => {}
        }
    }
    data.truncate(4 * MAX_LEN);
    data
}

fn run(target: &str, f: fn(&[u8]), data: &[u8], origin: &str) {
    if panic::catch_unwind(AssertUnwindSafe(|| f(data))).is_err() {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        panic!("fuzz target `{target}` failed on {origin}: input (hex) {hex}");
    }
}

#[test]
fn corpus_and_random_inputs_hold_every_invariant() {
    let iterations = std::env::var("TOWER_SHIELD_FUZZ_ITERATIONS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(ITERATIONS);
    for &(target, f) in TARGETS {
        let seeds = corpus(target);
        assert!(!seeds.is_empty(), "no committed corpus for `{target}`");
        for (path, data) in &seeds {
            run(target, f, data, &path.display().to_string());
        }
        let seed = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        let mut rng = Rng(seed);
        for i in 0..iterations {
            let data = mutate(&mut rng, &seeds);
            run(target, f, &data, &format!("generated input {i}"));
        }
    }
}

#[test]
fn every_target_has_a_cargo_fuzz_entry() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let manifest = fs::read_to_string(root.join("Cargo.toml")).expect("fuzz/Cargo.toml");
    for &(target, _) in TARGETS {
        let source = fs::read_to_string(root.join("fuzz_targets").join(format!("{target}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{target}.rs: {e}"));
        assert!(source.contains(&format!("__fuzz::{target}(")), "{target}.rs calls its target");
        assert!(manifest.contains(&format!("name = \"{target}\"")), "[[bin]] {target}");
    }
}
