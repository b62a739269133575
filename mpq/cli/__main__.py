"""`python -m mpq.cli` (e.g. under torchrun) runs the `mpq` command."""

import sys

try:
    from mpq.cli.main import main
except KeyboardInterrupt:  # Ctrl-C while Python imports mpq: no traceback, the status of an interrupt
    sys.exit(130)

sys.exit(main())
