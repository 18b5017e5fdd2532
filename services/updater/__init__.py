"""Updater service: the durable event log and per-user state."""
