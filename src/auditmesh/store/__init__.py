"""Storage of the ledger and its query indexes: one `Store` protocol, SQLite by default."""
