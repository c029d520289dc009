"""`auditmesh server`: HTTP API and tlog-tiles over the collector and the store (routes only)."""
