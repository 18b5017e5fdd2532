"""Updater service: the durable event log and per-user state (events.py), and the ranker's
online learning from impressions joined with feedback (learning.py, joiner.py)."""
