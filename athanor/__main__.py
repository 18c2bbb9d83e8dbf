import sys

from athanor.cli import main

sys.exit(main())
