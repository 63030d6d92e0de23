"""python -m gateway: see gateway/__init__.py."""
import sys

from gateway.supervisor import main

sys.exit(main())
