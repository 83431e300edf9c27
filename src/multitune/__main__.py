import sys

from multitune.cli import main

sys.exit(main())
