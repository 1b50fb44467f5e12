"""One thin module per command-line command (see search/cli.py): parse the arguments, then call one function.

Each `run(args)` imports the work it calls inside itself, on purpose: `--help`, a bad argument and the light
commands (export, dashboard, recover) then start without TensorFlow.
"""
