import sys

from gymops.cli import main

sys.exit(main())
