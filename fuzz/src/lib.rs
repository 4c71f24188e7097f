//! The checks behind the fuzz targets, in a library so that each target is one line
//! and `src/fuzz_tests.rs` can replay the corpora through the same checks on stable.

use audit_gateway::testing::fuzz as gw;

pub mod checks;
