"""The event log and per-user state behind the updater: the SQLite log (eventlog), the state
rebuilt from it (state), and the stores over them - local SQLite or a shared Redis (stores)."""
