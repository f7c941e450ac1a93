#!/bin/sh
# zerog.compute simulation stand-in for key-provider-build/run.sh of Dstack-TEE/dstack b5588fc
# (0.3 era), which is `docker compose up --build`: it runs in the foreground and blocks.
# The simulated key provider comes from the simulation kit; like upstream it ignores arguments,
# and it gets "$0" so that its shell errors name the script as dash would.
PYTHONPATH="@ZEROG_SIM_KIT@${PYTHONPATH:+:$PYTHONPATH}" exec python3 -B -m zerog_sim.keyprovider run --generation 0.3 --script "$0"
