"""`python -m mpq.cli` (e.g. under torchrun) runs the `mpq` command."""

import sys

from mpq.cli.main import main

sys.exit(main())
