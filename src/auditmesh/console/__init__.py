"""The web console served by `auditmesh server` at `/` (issue 7).

Place in the house: on top, next to `server/`; it only reads. `routes.py` serves the pages
(plain HTML, CSS and ES modules in `static/`, no third-party code) and the few JSON endpoints
the HTTP API lacks: the overview's ledger figures, the graph layout (`layout.py`, networkx),
the candidate policy files, findings and policy replay. Everything that shows events goes
through the API's audited reads (`/v1/events`, `/v1/traces/…`), so a page view is audited
like any other read; inclusion proofs are verified in the browser (`static/proof.js`).
"""
