"""Encoder service: texts and user interest to vectors with the language model."""
