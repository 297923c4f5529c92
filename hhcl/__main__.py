"""``python -m hhcl ...`` (and ``torchrun -m hhcl train ...``): the same command line as ``hhcl``.

The one place the engine package reaches the front end, so that torchrun can launch it by module name.
"""

from hhcl_tui.cli import main

if __name__ == "__main__":
    main()
