"""The ``adamml`` sub-commands: one module each (argparse, printing, exit codes), calling the library."""
