"""`python -m gradcam_repro` runs the command line."""

import sys

from gradcam_repro.cli import main

if __name__ == "__main__":
    sys.exit(main())
