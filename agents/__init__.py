"""The four agents and the instrument stations. Plain classes: the runtime makes them Ray actors.

Each validates what it receives (messages travel as JSON-compatible dicts) and answers with a
message; a bad request is answered with a `Fault`, never dropped.
"""
