"""The chaos fault proxy: a TCP proxy with Toxiproxy's toxics and HTTP API.

    loadctl chaos proxy --listen 127.0.0.1:9000 --upstream 127.0.0.1:8080

`proxy` (listeners and connections), `link` (one direction of one
connection), `toxics` (what each toxic does), `api` (the Toxiproxy-compatible
HTTP API), `client` (an async client of that API, also for real Toxiproxy),
`cli` (the command). See docs/chaos.md.

Nothing is imported here, so `loadctl.chaos.client` stays light for the
coordinator.
"""
