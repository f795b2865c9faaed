"""`python -m mongoose` is the `mongoose` command."""

import sys

from mongoose.cli import main

sys.exit(main())
