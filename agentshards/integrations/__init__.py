"""Integrations with agent frameworks, each an optional extra (``pip install 'agentshards[agents]'``).

Each integration imports its framework only when it is imported itself, and stands on agentshards'
public API; nothing in agentshards imports this package (an import-linter contract says so).

- :mod:`agentshards.integrations.openai_agents`: the OpenAI Agents SDK (``openai-agents``).
"""
