//! A day's close on a small ledger: two members, top-ups through two
//! channels, a transfer, the close, a statement, the late postings of the
//! next date. Prints the close's Markdown report and writes its files into
//! a temporary directory. `cargo run -p tally-business --example close_day`
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

use rust_decimal::Decimal;
use std::sync::Arc;
use tally_business::{Ledger, MemberKind, MemberLevel, OpenMember, PostRequest};
use tally_engine::{AccountingDate, Config, ManualClock, Timestamp, TxnId};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let dir = tempfile::tempdir().expect("temporary directory");
    // 2026-01-01T00:00:00Z: accounting date 2026-01-01 in UTC+8.
    let clock = Arc::new(ManualClock::new(Timestamp(1_767_225_600_000_000_000)));
    let config = Config::sled(dir.path().join("store")).with_clock(clock.clone());
    let ledger = Ledger::open_default(config).await.expect("open");
    let person = |serial, id_number: &str| OpenMember {
        serial,
        kind: MemberKind::PersonalUser,
        name: "Member".into(),
        id_number: id_number.into(),
        legal: false,
        level: MemberLevel("verified".into()),
        verified: true,
    };
    let alice = ledger
        .open_member(person(1, "11010519491231002X"))
        .await
        .expect("member")
        .number;
    let bob = ledger
        .open_member(person(2, "110101199003074514"))
        .await
        .expect("member")
        .number;
    let post = |id: u128, txn: &str| PostRequest::new(TxnId(id), txn);
    let yuan = |cents: i64| Decimal::new(cents, 2);
    ledger
        .post(
            post(1, "top_up")
                .member("member", alice)
                .channel("channel", "icbc")
                .amount("amount", yuan(500_00)),
        )
        .await
        .expect("top-up");
    ledger
        .post(
            post(2, "top_up")
                .member("member", bob)
                .channel("channel", "unionpay")
                .amount("amount", yuan(80_00)),
        )
        .await
        .expect("top-up");
    ledger
        .post(
            post(3, "transfer")
                .member("payer", alice)
                .member("payee", bob)
                .amount("amount", yuan(120_00)),
        )
        .await
        .expect("transfer");

    let today = AccountingDate(20_454);
    let close = ledger.close_day(today).await.expect("close");
    println!("{}", close.report.to_markdown());
    println!("summaries posted: {}", close.summaries.len());
    for line in close.subjects.iter().filter(|l| !l.closing.is_zero()) {
        println!(
            "subject {} {} {}: {}",
            line.code.0, line.name, line.currency, line.closing
        );
    }
    // The clock passes midnight; the platform has not closed the next
    // date, so this transfer belongs to it all the same.
    clock.advance_ms(30 * 3_600_000);
    ledger
        .post(
            post(4, "transfer")
                .member("payer", bob)
                .member("payee", alice)
                .amount("amount", yuan(20_00)),
        )
        .await
        .expect("transfer");
    let bob_id = ledger
        .account(bob, tally_business::AccountType::Balance)
        .await
        .expect("read")
        .expect("bob")
        .id;
    for date in [today, today.next()] {
        let s = ledger
            .engine()
            .statement(bob_id, date)
            .await
            .expect("statement")
            .expect("bob");
        println!(
            "statement of Bob {date}: opening {}, debits {}, credits {}, closing {} ({} details)",
            s.opening,
            s.debits,
            s.credits,
            s.closing,
            s.details.len()
        );
    }
    let files = close.write_files(dir.path()).expect("files");
    for f in files {
        println!(
            "wrote {}",
            f.file_name().and_then(|n| n.to_str()).unwrap_or("?")
        );
    }
}
