"""Shared by the four modules: settings, errors, auth, HTTP plumbing, JS formatting,
the key-value store facade and the session records.

Nothing here imports a module; modules import from here.
"""
