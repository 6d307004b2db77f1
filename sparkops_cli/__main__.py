import sys

from sparkops_cli.main import main

sys.exit(main())
