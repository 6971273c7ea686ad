"""Session storage (:8086): where sealed chunks and session metadata rest.

Storage never sees plaintext or unwrapped keys.  It keeps sealed chunk files
(`chunkstore`) and all metadata (`metastore`), and answers only the holder of
the internal service token.  `main.create_app` builds the service.
"""
