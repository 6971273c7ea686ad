"""Plumbing shared by the three services: errors, ids, states, settings, metrics, auth.

Nothing here touches key material or plaintext; `sessions.core` does the crypto.
"""
