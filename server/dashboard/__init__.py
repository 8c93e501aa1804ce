"""The operator's live dashboard: nodes, runs, privacy and refusals, read-only, on loopback,
behind an access token (served by `fedlora server start`)."""
