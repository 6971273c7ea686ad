"""The public gateway: authenticates clients, serves `/v1` and streams bytes to the processor.

It holds no keys and stores nothing; every operation is forwarded to the chunk
processor's `/internal/v1` with the service token.
"""
