"""The ground floor: the exception tree, frozen configuration, prices, process helpers, crash points.

Everything above may import from here; nothing here imports from another wing.
"""
