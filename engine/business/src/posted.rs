//! What a posting answers.

use tally_engine::{Leg, Timestamp, TxnCode, TxnId};

/// A posted request.
/// What the ledger posted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Posted {
    pub id: TxnId,
    pub code: TxnCode,
    pub timestamp: Option<Timestamp>,
    /// The answer to an earlier submission of the same request.
    pub duplicate: bool,
    pub legs: Vec<Leg>,
}
