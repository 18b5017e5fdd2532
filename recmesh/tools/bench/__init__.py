"""Measurements (not tests): `make bench` writes JSON and PNG under results/."""
