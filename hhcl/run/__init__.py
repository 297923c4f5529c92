"""The run directory's one owner: what is in ``runs/<name>/`` and how each file is written.

- :mod:`~hhcl.run.layout`      file names, finding a run's weight file, creating, reusing and refusing run directories
- :mod:`~hhcl.run.lock`        one writer per run directory (pid + host), stale-lock detection
- :mod:`~hhcl.run.events`      the typed event log: the only contract between the engine and any UI
- :mod:`~hhcl.run.state`       the training state beside the weights (optimizer, RNG, position)
- :mod:`~hhcl.run.checkpoint`  weights + state written and verified as one unit, resume

It builds on :mod:`hhcl.atomic` (atomic writes), :mod:`hhcl.weight_files` and :mod:`hhcl.faults` (test-only
fault points), none of which imports it back. Importing this package does not import torch; the state and checkpoint modules do.
"""
