"""The contract between the processes: wire models (`models.py`) and sans-I/O operations.

`operations.py` describes each endpoint once (how to build its request, how to read
its answer, one decoder for every error body); the CLI's sync client and the
services' async clients only move the bytes.
"""
