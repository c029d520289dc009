"""Questions asked of the ledger: which events (query), how one request travelled (trace), and
who calls whom how well (graph, over the rollup). Everything here only reads the ledger.

Place in the house: between the store and the front ends. `server/query_routes.py` and
`cli/query.py` parse what people ask into these modules' values and render their answers;
the cores (`trace.build`, `graph.build`, `rollup.fold`, `query.sql`) are pure functions over
rows, and the few functions that run SQL say so in their names and docstrings.
"""
