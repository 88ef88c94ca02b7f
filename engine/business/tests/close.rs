//! The business day's close: the daily summaries posted as part of it (one
//! per daily account and day, on the closed date), then the engine's cut
//! and checks; `summarize_day` run again after new activity.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::inconsistent_digit_grouping
)]

use rust_decimal::Decimal;
use std::sync::Arc;
use tally_business::*;
use tally_engine::*;

const START: Timestamp = Timestamp(1_767_225_600_000_000_000); // 2026-01-01T00:00:00Z
const TODAY: AccountingDate = AccountingDate(20_454); // 2026-01-01 in UTC+8

fn yuan(cents: i64) -> Decimal {
    Decimal::new(cents, 2)
}

struct World {
    ledger: Ledger,
    _dir: tempfile::TempDir,
    members: Vec<AccountNo>,
}

async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(START));
    let config = Config::sled(dir.path()).with_shards(2).with_clock(clock);
    let ledger = Ledger::open_default(config).await.unwrap();
    let mut members = Vec::new();
    for (serial, id_number) in [(1, "11010519491231002X"), (2, "110101199003074514")] {
        let open = OpenMember {
            serial,
            kind: MemberKind::PersonalUser,
            name: "Member".into(),
            id_number: id_number.into(),
            legal: false,
            level: MemberLevel("verified".into()),
            verified: true,
        };
        members.push(ledger.open_member(open).await.unwrap().number);
    }
    World {
        ledger,
        _dir: dir,
        members,
    }
}

impl World {
    async fn top_up(&self, id: u128, who: usize, cents: i64) {
        let request = PostRequest::new(TxnId(id), "top_up")
            .member("member", self.members[who])
            .channel("channel", "icbc")
            .amount("amount", yuan(cents));
        self.ledger.post(request).await.unwrap();
    }

    async fn top_up_via(&self, id: u128, who: usize, channel: &str, cents: i64) {
        let request = PostRequest::new(TxnId(id), "top_up")
            .member("member", self.members[who])
            .channel("channel", channel)
            .amount("amount", yuan(cents));
        self.ledger.post(request).await.unwrap();
    }

    /// The daily accounts' own balances (slots excluded).
    async fn own(&self, internal: Internal) -> Decimal {
        let id = internal.account_no().account_id(0);
        self.ledger
            .engine()
            .account(id)
            .await
            .unwrap()
            .unwrap()
            .balance
    }
}

const RECEIVABLE: Internal = Internal::Channel {
    number: 1,
    account: ChannelAccount::Receivable,
};
const UNIONPAY_RECEIVABLE: Internal = Internal::Channel {
    number: 2,
    account: ChannelAccount::Receivable,
};

#[tokio::test]
async fn a_second_summary_after_new_activity_posts_it_for_every_account() {
    let w = world().await;
    w.top_up(1, 0, 100_00).await;
    let first = w.ledger.summarize_day().await.unwrap();
    assert!(!first.is_empty());
    assert_eq!(w.own(RECEIVABLE).await, yuan(100_00));
    // New activity on the same day: the run again posts what arrived.
    w.top_up(2, 1, 40_00).await;
    let second = w.ledger.summarize_day().await.unwrap();
    assert!(second.iter().all(|p| !p.duplicate), "{second:?}");
    assert_eq!(w.own(RECEIVABLE).await, yuan(140_00));
    let third = w.ledger.summarize_day().await.unwrap();
    assert!(
        third.is_empty() || third.iter().all(|p| p.duplicate),
        "{third:?}"
    );
    // Two daily accounts; new activity on either, then on the other: each
    // run posts for whichever has something, never stopping early.
    w.top_up_via(3, 0, "unionpay", 5_00).await;
    assert_eq!(w.ledger.summarize_day().await.unwrap().len(), 1);
    w.top_up_via(4, 0, "icbc", 6_00).await;
    w.top_up_via(5, 1, "unionpay", 7_00).await;
    assert_eq!(w.ledger.summarize_day().await.unwrap().len(), 2);
    assert_eq!(w.own(RECEIVABLE).await, yuan(146_00));
    assert_eq!(w.own(UNIONPAY_RECEIVABLE).await, yuan(12_00));
}

#[tokio::test]
async fn a_close_posts_each_daily_summary_on_the_closed_date_and_checks_clean() {
    let w = world().await;
    w.top_up_via(1, 0, "icbc", 100_00).await;
    w.top_up_via(2, 1, "unionpay", 30_00).await;
    let close = w.ledger.close_day(TODAY).await.unwrap();
    assert!(close.report.ok, "{:#?}", close.report);
    assert_eq!(close.summaries.len(), 2, "{:?}", close.summaries);
    assert_eq!(w.own(RECEIVABLE).await, yuan(100_00));
    assert_eq!(w.own(UNIONPAY_RECEIVABLE).await, yuan(30_00));
    // The summary's detail is the receivable's one detail of the closed date.
    let own = RECEIVABLE.account_no().account_id(0);
    let statement = w
        .ledger
        .engine()
        .statement(own, TODAY)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(statement.details.len(), 1);
    assert!(close
        .summaries
        .iter()
        .any(|p| p.id == statement.details[0].txn));
    assert_eq!(
        (statement.opening, statement.closing),
        (yuan(0), yuan(100_00))
    );
    // The subject ledger: the receivable's subject holds both channels'
    // receivables; every ancestor holds at least as many lines' sums.
    let subject = RECEIVABLE.subject();
    let line = close
        .subjects
        .iter()
        .find(|l| l.code == subject)
        .expect("the receivable's subject");
    assert_eq!(line.closing, yuan(130_00));
    if let Some(parent) = line.parent {
        let up = close.subjects.iter().find(|l| l.code == parent).unwrap();
        let children: Decimal = close
            .subjects
            .iter()
            .filter(|l| l.parent == Some(parent))
            .map(|l| l.closing)
            .sum();
        let own: Decimal = close
            .report
            .trial_balance
            .iter()
            .filter(|t| t.subject == parent)
            .map(|t| t.closing)
            .sum();
        assert_eq!(up.closing, children + own);
    }
    let dir = tempfile::tempdir().unwrap();
    let files = close.write_files(dir.path()).unwrap();
    assert_eq!(files.len(), 5);
    let csv = std::fs::read_to_string(files.last().unwrap()).unwrap();
    assert_eq!(csv.lines().count(), 1 + close.subjects.len());
    // The close again (a re-run after a crash): no second summary, the
    // same report.
    let again = w.ledger.close_day(TODAY).await.unwrap();
    assert!(again.summaries.is_empty());
    assert_eq!(again.report, close.report);
    // After the cut: the next date, and its own summary.
    w.top_up_via(3, 0, "icbc", 1_00).await;
    let alice = w.members[0];
    let first = w
        .ledger
        .statement(alice, AccountType::Balance, TODAY)
        .await
        .unwrap()
        .unwrap();
    let second = w
        .ledger
        .statement(alice, AccountType::Balance, TODAY.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((first.opening, first.closing), (yuan(0), yuan(100_00)));
    assert_eq!(
        (second.opening, second.credits, second.closing),
        (yuan(100_00), yuan(1_00), yuan(101_00))
    );
    let next = w.ledger.close_day(TODAY.next()).await.unwrap();
    assert!(next.report.ok, "{:#?}", next.report);
    assert_eq!(next.summaries.len(), 1);
    let statement = w
        .ledger
        .engine()
        .statement(own, TODAY.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (statement.opening, statement.closing),
        (yuan(100_00), yuan(101_00))
    );
    // A date not open is refused before anything is posted.
    let refused = w.ledger.close_day(TODAY).await;
    assert!(
        matches!(refused, Err(LedgerError::Close(CloseError::NotOpen { .. }))),
        "{refused:?}"
    );
    let audit = w.ledger.engine().audit().await.unwrap();
    assert!(audit.ok(), "{audit:?}");
}

#[tokio::test]
async fn a_channel_statement_is_matched_against_the_channels_accounts_of_the_day() {
    let w = world().await;
    w.top_up_via(1, 0, "icbc", 500_00).await;
    w.top_up_via(2, 1, "icbc", 80_00).await;
    w.top_up_via(3, 0, "icbc", 7_00).await;
    w.top_up_via(4, 1, "unionpay", 9_00).await;
    // The close's summary moves are ours alone, never matched.
    assert!(w.ledger.close_day(TODAY).await.unwrap().report.ok);
    let csv = "reference,amount,date\n\
               1,500.00,2026-01-01\n\
               2,81.00,2026-01-01\n\
               99,10.00,2026-01-01\n\
               5,1.00,2026-01-02\n";
    let r = w.ledger.reconcile("icbc", TODAY, csv).await.unwrap();
    assert!(!r.balanced());
    let refs = |items: &[OurItem]| {
        items
            .iter()
            .map(|i| i.reference.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(refs(&r.matched), ["1"]);
    assert_eq!(r.mismatched.len(), 1);
    assert_eq!(
        (r.mismatched[0].ours.amount, r.mismatched[0].theirs.amount),
        (yuan(80_00), yuan(81_00))
    );
    assert_eq!(refs(&r.long), ["3"], "ours only");
    assert_eq!(
        r.short
            .iter()
            .map(|l| l.reference.as_str())
            .collect::<Vec<_>>(),
        ["99"],
        "theirs only"
    );
    assert_eq!(r.other_dates.len(), 1);
    // The unionpay top-up is not icbc's; a statement of exactly our items
    // balances.
    let exact =
        "reference,amount,date\n1,500.00,2026-01-01\n2,80.00,2026-01-01\n3,7.00,2026-01-01\n";
    assert!(w
        .ledger
        .reconcile("icbc", TODAY, exact)
        .await
        .unwrap()
        .balanced());
    // Bad input: a typed error naming the line, nothing compared.
    let bad = w
        .ledger
        .reconcile("icbc", TODAY, "reference,amount,date\n1,5x,2026-01-01\n")
        .await;
    assert!(
        matches!(
            bad,
            Err(LedgerError::Statement(StatementError::Line { line: 2, .. }))
        ),
        "{bad:?}"
    );
    let header = w.ledger.reconcile("icbc", TODAY, "ref;amount\n").await;
    assert!(
        matches!(header, Err(LedgerError::Statement(StatementError::Header))),
        "{header:?}"
    );
    let unknown = w.ledger.reconcile("nobank", TODAY, exact).await;
    assert!(
        matches!(unknown, Err(LedgerError::UnknownChannel(_))),
        "{unknown:?}"
    );
}

#[tokio::test]
async fn a_day_of_more_details_than_a_page_is_reconciled_whole() {
    let w = world().await;
    // Enough top-ups that some summary slot holds more than a statement's
    // first page of details (DETAIL_PAGE_MAX).
    let count = 5 * DETAIL_PAGE_MAX as u128;
    let ids: Vec<u128> = (1..=count).collect();
    for chunk in ids.chunks(300) {
        futures_util::future::join_all(chunk.iter().map(|&id| w.top_up_via(id, 0, "icbc", 1_00)))
            .await;
    }
    let mut paged = 0;
    for slot in 1..=4 {
        let id = RECEIVABLE.account_no().account_id(slot);
        let statement = w
            .ledger
            .engine()
            .statement(id, TODAY)
            .await
            .unwrap()
            .unwrap();
        paged += usize::from(!statement.complete);
    }
    assert!(paged > 0, "no slot needed a second page");
    let mut csv = String::from("reference,amount,date\n");
    for id in 2..=count {
        csv.push_str(&format!("{id},1.00,2026-01-01\n"));
    }
    let r = w.ledger.reconcile("icbc", TODAY, &csv).await.unwrap();
    assert_eq!(r.matched.len(), count as usize - 1);
    assert_eq!(r.long.iter().map(|i| i.txn).collect::<Vec<_>>(), [TxnId(1)]);
    assert!(r.short.is_empty() && r.mismatched.is_empty());
}
