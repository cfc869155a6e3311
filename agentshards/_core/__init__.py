"""The durable core: one SQLite shard per agent, its journal of runs and steps, and the agent handle.

Also the rules every file of a data dir lives by, whoever uses them: who may change it (``locks``), how a
shard is replaced without a window of loss (``replace``), which stored targets may be imported
(``target_policy``). Shard connections are opened by ``sqlite.open_connection``; nothing here imports a
replica, a fleet or the CLI.
"""
