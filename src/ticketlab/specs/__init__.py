"""The experiments' spec classes, without torch: one module per experiment (`specs.lottery.LotterySpec`, ...).

The command line parses and validates settings with these alone, so `ticketlab --help`, `ticketlab
<experiment> --help` and every bad-input error stay fast; the experiment modules
(`ticketlab.experiments.<name>`, which import torch) re-export them and do the work. Modules here import
only the standard library, `ticketlab.spec`, `ticketlab.names`, `ticketlab.errors`, `ticketlab.steps` and
each other (`tests/test_cli.py` checks that no torch is loaded).
"""
