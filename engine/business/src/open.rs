//! Opening a [`Ledger`]: the engine (off the runtime's threads), the
//! rules' internal accounts and the red-packet product accounts, the
//! members, then what each product keeps in memory — members' statuses,
//! the red packets still open, the merchants' alert thresholds. It stands
//! above every module whose memory it loads, so none of them imports the
//! others through the ledger.

use super::coupon::load_alerts;
use super::error::LedgerError;
use super::ledger::{load_members, Ledger};
use super::lifecycle::load_statuses;
use super::red_packet::load_open_packets;
use super::red_packet_book::red_packet_accounts;
use super::rules::RuleSet;
use super::subject::Chart;
use std::sync::Arc;
use tally_engine::{Config, Engine, OpenError, SUBMIT_TRANSACTIONS_MAX};

impl Ledger {
    /// Opens the engine and the rules' internal accounts. The rules were
    /// validated when parsed: a bad rule file never gets this far.
    pub async fn open(config: Config, rules: RuleSet) -> Result<Ledger, LedgerError> {
        if !config.currencies.iter().any(|(c, _)| *c == rules.currency) {
            return Err(LedgerError::CurrencyNotConfigured(rules.currency));
        }
        let clock = Arc::clone(&config.clock);
        let utc_offset_s = config.utc_offset_s;
        let scale = config
            .currencies
            .iter()
            .find(|(c, _)| *c == rules.currency)
            .map_or(2, |(_, scale)| *scale);
        // Opening reads the store and replays the log: blocking work, kept
        // off the runtime's threads (the engine may also block on its own
        // shard replies while recovering).
        let engine = tokio::task::spawn_blocking(move || Engine::open(config))
            .await
            .map_err(|e| LedgerError::Open(OpenError::Thread(e.to_string())))??;
        let chart = Chart::standard();
        let mut accounts = Vec::new();
        for (internal, daily) in rules.internal_accounts() {
            let slots = if daily { rules.summary_slots } else { 0 };
            for sub in 0..=slots {
                accounts.push(internal.new_account(&chart, rules.currency, sub));
            }
        }
        if rules.red_packet.is_some() {
            accounts.extend(red_packet_accounts(rules.currency));
        }
        for chunk in accounts.chunks(SUBMIT_TRANSACTIONS_MAX) {
            for result in engine.open_accounts(chunk.to_vec()).await? {
                result?;
            }
        }
        let members = load_members(&engine).await?;
        let ledger = Ledger::assemble(engine, rules, chart, members, clock, utc_offset_s, scale);
        load_statuses(&ledger).await?;
        load_open_packets(&ledger).await?;
        load_alerts(&ledger).await?;
        Ok(ledger)
    }

    /// [`Ledger::open`] with the shipped rule file.
    pub async fn open_default(config: Config) -> Result<Ledger, LedgerError> {
        Ledger::open(config, RuleSet::default_rules()?).await
    }
}
