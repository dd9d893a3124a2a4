"""Locust load tests of a running payray stack: merchant users, load shapes, PSP fault profiles.

Talks HTTP only (the API and the PSP emulator's control routes), to loopback only, bounded in users and time.
"""
