"""Submission tooling: the packed train_gpt.py, record folders, audits and significance tests.

Nothing in the library imports this package; it works on what the library's runs leave on disk.
"""
