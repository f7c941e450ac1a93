"""zerog_sim: the simulated TDX + NVIDIA host used by the zerog.compute tests.

The package holds the host-state profiles (``profiles``), the active-state file helpers
(``state``), the fixture-tree builder (``hostfs``) and the stand-in commands that read the
active state (``host_lspci``, ``host_nvtools``, ``host_rdmsr``, ``host_dmesg``). Other helpers add
their own modules (the private-ml-sdk repository builder, the dstack stand-ins, ...).

Everything that runs inside a simulated instance uses the standard library only; PyYAML is
needed only to read profile files (``zerog_sim.profiles``).
"""

__all__ = ["__version__"]

__version__ = "0.1.0"
