import sys

from rtlipsync.cli import main

sys.exit(main())
