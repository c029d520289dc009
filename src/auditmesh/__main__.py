"""`python -m auditmesh` runs the CLI."""

import sys

from auditmesh.cli.main import main

sys.exit(main())
