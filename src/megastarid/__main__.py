import sys

from megastarid.cli import main

sys.exit(main())
