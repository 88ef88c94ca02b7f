//! The harness's library part: what the `tally-loadtest` binary shares with
//! the fuzz targets in `engine/fuzz/` (the replay line decoder). Not a
//! supported API.

pub mod line;
