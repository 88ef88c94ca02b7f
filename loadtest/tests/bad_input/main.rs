//! The bad-input corpus: one table of hostile inputs across every surface
//! a caller reaches — the engine API, the business layer (`tally-business`
//! `Ledger`), `tally-loadtest replay` lines, the posting-rules TOML and the
//! CLI's flags. Each case states the exact typed error (the enum variant
//! with its fields, or the exact text where the surface speaks text) and
//! its runner checks that nothing changed: balances, versions, details,
//! records, and the answers of ids already used. A refused id is checked
//! against what its surface documents: unused unless the refusal is one
//! the engine records (then the id keeps that answer for ever).
// Amounts are written as yuan_fen (100_00 is 100.00 yuan).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

mod business;
mod cli;
mod engine;
mod replay;
mod rules;

/// The `tally-loadtest` binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_tally-loadtest");

/// What went wrong, one line per failed check, reported together.
pub type Failures = Vec<String>;

/// Cases per surface, at least: the corpus may grow, not shrink.
const ENGINE_MIN: usize = 60;
const BUSINESS_MIN: usize = 60;
const REPLAY_MIN: usize = 60;
const RULES_MIN: usize = 30;
const CLI_MIN: usize = 30;
/// The whole corpus, at least.
const TOTAL_MIN: usize = 150;

#[test]
fn bad_input_corpus() {
    let engine_cases = engine::cases();
    let business_world = business::World::build();
    let business_cases = business::cases(&business_world);
    let replay_cases = replay::cases();
    let rules_cases = rules::cases();
    let cli_cases = cli::cases();
    let counts = [
        ("engine", engine_cases.len(), ENGINE_MIN),
        ("business", business_cases.len(), BUSINESS_MIN),
        ("replay", replay_cases.len(), REPLAY_MIN),
        ("rules", rules_cases.len() + rules::OPEN_CASES, RULES_MIN),
        ("cli", cli_cases.len(), CLI_MIN),
    ];
    let total: usize = counts.iter().map(|c| c.1).sum();
    for (surface, count, min) in counts {
        assert!(count >= min, "{surface}: {count} cases, fewer than {min}");
    }
    assert!(total >= TOTAL_MIN, "{total} cases, fewer than {TOTAL_MIN}");
    eprintln!("bad-input corpus: {total} cases {counts:?}");
    let mut failures = Failures::new();
    let world = engine::World::build();
    engine::run(&world, &engine_cases, &mut failures);
    engine::check_known_answers(&world, &mut failures);
    business::run(&business_world, &business_cases, &mut failures);
    business::check_known_answers(&business_world, &mut failures);
    replay::run(BIN, &replay_cases, &mut failures);
    rules::run(&rules_cases, &mut failures);
    rules::check_open(&mut failures);
    cli::run(BIN, &cli_cases, &mut failures);
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
