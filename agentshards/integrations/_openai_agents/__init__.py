"""The private parts of :mod:`agentshards.integrations.openai_agents`, one noun per module."""
