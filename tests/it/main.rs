//! Integration tests: one binary (built and linked once), one module per concern.

mod common;
mod get_since;
