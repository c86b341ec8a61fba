//! SQLite implementation of the Store trait.
