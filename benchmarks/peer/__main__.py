"""python -m benchmarks.peer --archive model_store/digits.mar --token-file FILE: the peer server by hand."""
import sys

from benchmarks.peer.server import main

sys.exit(main())
