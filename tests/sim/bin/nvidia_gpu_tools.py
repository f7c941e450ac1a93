#!/usr/bin/env python
"""Stand-in for NVIDIA gpu-admin-tools `nvidia_gpu_tools.py`: see zerog_sim.host_nvtools."""

import os
import sys

sys.dont_write_bytecode = True  # leave no __pycache__ in the kit
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))

from zerog_sim.host_nvtools import main  # noqa: E402  (after the sys.path set-up)

raise SystemExit(main(sys.argv[1:], sys.argv[0]))
