"""One module per command of `python -m audit` (the table is audit/cli.py): ``configure(parser)`` adds the
arguments and the function that runs it. Argument handling only: the work is done in the stage folders."""
