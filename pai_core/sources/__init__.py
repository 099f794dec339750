"""Sources turn recordings into ``Observation`` objects; they know nothing of the policy's internals."""
