"""The run directory's one owner: what is in ``runs/<name>/`` and how each file is written.

- :mod:`~hhcl.run.layout`      file names, creating, reusing and refusing run directories
- :mod:`~hhcl.run.atomic`      atomic file writes and clean-up of interrupted ones
- :mod:`~hhcl.run.lock`        one writer per run directory (pid + host), stale-lock detection
- :mod:`~hhcl.run.events`      the typed event log: the only contract between the engine and any UI
- :mod:`~hhcl.run.state`       the training state beside the weights (optimizer, RNG, position)
- :mod:`~hhcl.run.checkpoint`  weights + state written and verified as one unit, resume
- :mod:`~hhcl.run.faults`      test-only fault injection at named points (crash-consistency tests)

Importing this package does not import torch; the state and checkpoint modules do.
"""
