import sys

from gradcam_repro.cli import main

sys.exit(main())
