#!/usr/bin/env bash
# zerog.compute simulation stand-in for key-provider-build/run.sh of Dstack-TEE/dstack v0.5.5,
# which is `docker compose up --build -d` (services restart always) plus hints on where the
# endpoint and the logs are.  The simulated key provider comes from the simulation kit; like
# upstream it ignores arguments, and it gets "$0" so that its shell errors name the script as
# bash would.
PYTHONPATH="@ZEROG_SIM_KIT@${PYTHONPATH:+:$PYTHONPATH}" exec python3 -B -m zerog_sim.keyprovider run --generation 0.5.5 --script "$0"
