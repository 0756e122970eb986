"""The agents room: tools an agent can call, and the agent loop over an OpenAI-compatible endpoint."""
