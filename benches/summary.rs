//! The targets of the benches, as ratios of figures measured in this run: read back from
//! criterion's estimates (medians) once every group has run, and printed as one table.

use std::{path::PathBuf, sync::OnceLock, time::SystemTime};

use criterion::Criterion;

static STARTED: OnceLock<SystemTime> = OnceLock::new();

/// Notes when the run started, so that figures of earlier runs are never mixed in. Registered
/// first.
pub(crate) fn start(_: &mut Criterion) {
    STARTED.get_or_init(SystemTime::now);
}

/// Where criterion writes its estimates: `CRITERION_HOME`, else `<target>/criterion`.
fn criterion_home() -> Option<PathBuf> {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return Some(home.into());
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return Some(PathBuf::from(target).join("criterion"));
    }
    // The bench binary is `<target>/<profile>/deps/<name>-<hash>`.
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.parent()?.parent()?.join("criterion"))
}

/// The median of `group/bench` in nanoseconds, if it was measured by this process.
fn criterion_median(home: &std::path::Path, started: SystemTime, id: &str) -> Option<f64> {
    let path = home.join(id).join("new").join("estimates.json");
    let modified = std::fs::metadata(&path).ok()?.modified().ok()?;
    if modified < started {
        return None;
    }
    let json: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    json["median"]["point_estimate"].as_f64()
}

/// Nanoseconds per call of `f`, over `batch` calls: one timing of a round measured in turns.
pub(crate) fn time_batch(batch: u32, f: impl Fn()) -> f64 {
    let start = std::time::Instant::now();
    for _ in 0..batch {
        f();
    }
    start.elapsed().as_nanos() as f64 / f64::from(batch)
}

/// The median of per-round figures.
pub(crate) fn median(mut figures: Vec<f64>) -> f64 {
    figures.sort_by(f64::total_cmp);
    figures[figures.len() / 2]
}

/// Prints each target with its measured figures and whether it is met. Registered last.
pub(crate) fn targets(_: &mut Criterion) {
    if std::env::args().any(|arg| arg == "--list") {
        return;
    }
    let started = STARTED.get().copied().unwrap_or(SystemTime::UNIX_EPOCH);
    let Some(home) = criterion_home() else { return };
    let get = |id: &str| criterion_median(&home, started, id);
    let mut lines = Vec::new();
    let mut line = |target: String, figures: Option<(String, bool)>| {
        let (figures, verdict) = match figures {
            Some((figures, met)) => (figures, if met { "met" } else { "NOT MET" }),
            None => ("not measured in this run".to_owned(), "-"),
        };
        lines.push(format!("{target:<44} {figures:<52} {verdict}"));
    };
    let us = |ns: f64| format!("{:.2} µs", ns / 1000.0);

    line(
        "preset hs256 warm <= bare + 2 µs".to_owned(),
        get("preset/hs256_warm").zip(get("preset/bare")).map(|(shield, bare)| {
            let overhead = shield - bare;
            (format!("{} - {} = +{}", us(shield), us(bare), us(overhead)), overhead <= 2000.0)
        }),
    );
    for alg in ["rs256", "es256", "eddsa"] {
        line(
            format!("preset {alg} warm <= 1.3 x hs256 warm"),
            get(&format!("preset/{alg}_warm"))
                .zip(get("preset/hs256_warm"))
                .map(|(a, h)| (format!("{} / {} = {:.2}x", us(a), us(h), a / h), a <= 1.3 * h)),
        );
    }
    for alg in ["hs256", "rs256", "es256", "eddsa"] {
        let cold = get(&format!("auth/{alg}_cold"));
        let bare = get("auth/bare_bearer");
        let raw = get(&format!("auth/raw_jsonwebtoken_{alg}"));
        line(
            format!("auth {alg} cold - bare <= raw decode + 1 µs"),
            cold.zip(bare).zip(raw).map(|((cold, bare), raw)| {
                let cost = cold - bare;
                (format!("+{} vs {} (raw)", us(cost), us(raw)), cost <= raw + 1000.0)
            }),
        );
    }
    for rejection in
        ["rejected_401_bad_signature", "rejected_401_missing", "rejected_403_scope", "rejected_429"]
    {
        line(
            format!("preset {rejection} <= accepted"),
            get(&format!("preset/{rejection}"))
                .zip(get("preset/hs256_warm"))
                .map(|(r, a)| (format!("{} / {} = {:.2}x", us(r), us(a), r / a), r <= a)),
        );
    }
    println!("\nTargets (medians of this run, {}):", home.display());
    for line in lines {
        println!("  {line}");
    }
    let mut turns = Vec::new();
    let mut bare = None;
    if get("auth/hs256_cold").is_some() {
        turns.extend(crate::auth::cold_interleaved());
    }
    if get("preset/hs256_warm").is_some() {
        let (rows, bare_us) = crate::preset::interleaved();
        turns.extend(rows);
        bare = Some(bare_us);
    }
    if !turns.is_empty() {
        println!("\nTargets measured in turns (medians of per-round figures):");
        for (name, value, limit) in turns {
            let verdict = if value <= limit { "met" } else { "NOT MET" };
            println!("  {name:<52} {value:>6.2} (limit {limit})  {verdict}");
        }
    }
    if let Some(bare) = bare {
        // For scale: the machine measured about 1.3 µs.
        println!("  (bare axum in these rounds: {bare:.2} µs per request)");
    }
}
