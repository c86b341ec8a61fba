//! Postgres implementation of the Store trait.
