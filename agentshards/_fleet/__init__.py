"""Running agents: ``run_agent`` (the core plus replication), the supervisor, zygote and workers, the fleet,
and the read-side views over a data dir (status, spend, fleet-wide SQL).
"""
