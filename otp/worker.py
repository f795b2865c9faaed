"""``python -m otp.worker``: run one worker process of a node (see :mod:`otp.node`)."""

import sys

from otp.node import worker_main

if __name__ == "__main__":
    sys.exit(worker_main())
