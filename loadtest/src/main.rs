//! tally-loadtest: the load-test harness of the tally posting engine.
//!
//! - `run`: drive an in-process engine with a generated workload, report
//!   throughput and latency, then reopen the store and check the invariants.
//! - `verify`: reopen an existing sled store and audit it.
//! - `replay`: apply JSON-lines operations and print each outcome.
//! - `compare --against postgres`: the same workload on tally and on
//!   PostgreSQL built the seed's way, side by side.
//! - `crash`: kill -9 a child running a load on one store, reopen, check
//!   every answer it was given, and again, for `--cycles` cycles.
//!
//! Exit codes: 0 success; 1 the invariants do not hold; 2 bad input or the
//! command could not be carried out (one `error: …` line on stderr).

mod business;
mod chart;
mod compare;
mod crash;
mod products;
mod replay;
mod report;
mod run;
mod setup;
mod verify;
mod workload;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser, Debug)]
#[command(name = "tally-loadtest", version, about, long_about = None)]
// Without a subcommand: a one-line error, not the help text.
#[command(arg_required_else_help = false)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Drive the engine with a generated workload and check the invariants.
    Run(setup::RunArgs),
    /// Reopen an existing sled store, audit it and print its state digest.
    Verify(verify::VerifyArgs),
    /// Apply JSON-lines operations and print one JSON outcome per line.
    Replay(replay::ReplayArgs),
    /// Run the same workload on tally and on PostgreSQL (the seed's design)
    /// and print them side by side.
    Compare(compare::CompareArgs),
    /// Kill a child running a load on one sled store with SIGKILL at seeded
    /// moments, reopen and check every answer it was given; repeat.
    Crash(crash::CrashArgs),
    /// The crash loop's child (run by `crash`, not by hand).
    #[command(hide = true, name = "crash-child")]
    CrashChild(crash::ChildArgs),
}

/// Exit code of bad input and of commands that could not be carried out.
const EXIT_ERROR: u8 = 2;

/// `--shards`: parsed within the engine's own range, which a bad value's
/// error names (not the range of the integer type).
pub(crate) fn shards_arg() -> clap::builder::RangedI64ValueParser<u16> {
    clap::value_parser!(u16).range(1..=i64::from(tally_engine::SHARDS_MAX))
}

/// glibc's malloc gives each thread that allocates an arena of its own (up
/// to 8 per core) and keeps what each frees: with the engine's threads
/// (tokio workers, sequencer, shards, checkpoint, merge) the resident size
/// then creeps up with time, ~11 bytes per transfer over a 5-minute run,
/// though what is in use stays flat (ARCHITECTURE.md, "Memory budget").
/// Two arenas keep it to what is in use. glibc reads `MALLOC_ARENA_MAX` only
/// as the process starts, so the harness starts itself again with it set
/// (`exec`, the same process id), unless it is set already; an embedding
/// application sets its allocator the same way.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn cap_malloc_arenas() {
    use std::os::unix::process::CommandExt;
    const VAR: &str = "MALLOC_ARENA_MAX";
    if std::env::var_os(VAR).is_some() {
        return;
    }
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    // Returns only if the exec failed: then run as we are.
    let _ = std::process::Command::new(exe)
        .args(std::env::args_os().skip(1))
        .env(VAR, "2")
        .exec();
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn cap_malloc_arenas() {}

fn main() -> ExitCode {
    cap_malloc_arenas();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            eprintln!("{}", clap_one_line(&e.to_string()));
            return ExitCode::from(EXIT_ERROR);
        }
        Err(e) => {
            // --help and --version.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
    };
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Verify(args) => verify::verify(args),
        Command::Replay(args) => replay::replay(args),
        Command::Compare(args) => compare::compare(args),
        Command::Crash(args) => crash::crash(args),
        Command::CrashChild(args) => crash::child(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            let text = format!("{e:#}");
            eprintln!(
                "error: {}",
                text.split_whitespace().collect::<Vec<_>>().join(" ")
            );
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// clap's multi-line usage error as one line: the message and its hints,
/// without the usage block.
fn clap_one_line(text: &str) -> String {
    let kept: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let line = kept.join(" ");
    if line.starts_with("error:") {
        line
    } else {
        format!("error: {line}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clap_errors_fit_on_one_line() {
        let text = "error: invalid value 'foo' for '--workload <WORKLOAD>'\n  [possible values: uniform, zipf, hot]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(text),
            "error: invalid value 'foo' for '--workload <WORKLOAD>' [possible values: uniform, zipf, hot]"
        );
        let text = "error: unexpected argument '--x' found\n\nUsage: tally-loadtest run [OPTIONS]\n\nFor more information, try '--help'.\n";
        assert_eq!(
            clap_one_line(text),
            "error: unexpected argument '--x' found"
        );
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
