import sys

from ptft_fast.cli import main

sys.exit(main())
