"""The Item: its states, rules, row and pipeline. No broker, no HTTP."""
