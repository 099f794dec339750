"""SO-101 pick-cube simulation: scripted expert, recordings, a trained ACT, and the ``pai demo`` stages."""
