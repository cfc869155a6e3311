"""The durable core: one SQLite shard per agent, its journal of runs and steps, and the agent handle.

SQLite (apsw) is set up here and only here. Nothing in this wing knows about replicas, fleets or the CLI.
"""
