import sys

from layer_harmonizer.cli import main

sys.exit(main())
