"""Runtimes, parity ledger and latency protocol for deployed artifacts.

Not built yet (tracked as its own issue). Nothing in this package is imported by stage 1.
"""
